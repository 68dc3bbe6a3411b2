"""The snapshot browser process: one read-only FUSE mount of every snapshot set.

One job: run `browser.ops.BrowserOperations` at ``--mount PATH`` and serve the
daemon's control channel (``--control-fd N``, `ipc` frames)::

    python -m shadowfs.browser.process --control-fd N --mount PATH [--threads T]

- ``--threads T`` (default ``$SHADOWFS_BROWSER_THREADS``, else 0) serves
  blocking reads and lookups in up to T worker threads; 0 serves them on the
  trio thread, which is faster where cores are few and the disk is fast;
- creates PATH if missing, mounts it ("ro,nosuid,nodev", fsname
  shadowfs-snapshots), then sends ``{"event": "ready"}``;
- ``{"id", "op": "volumes", "volumes": [{"name", "index", "diff_area"}]}``
  with one backing-root descriptor per volume (same order) replaces the
  volumes shown; reply ``{"id", "ok": true}`` once the kernel has forgotten
  what it cached of sets no longer shown;
- ``{"id", "op": "forget", "volume", "inos"}`` (the daemon, after objects were
  marked damaged): the kernel forgets their pages and attributes in every
  snapshot (`BrowserOperations.forget_damaged`); reply ``{}``.
- ``{"id", "op": "refresh"}`` (the daemon, after sets came or went): reply
  once the browser has re-read the sets and the kernel has forgotten what it
  cached of them that is no longer true (`BrowserOperations.refresh`);
- ``{"id", "op": "status"}`` replies with the mount path, the volumes, the
  number of snapshot sets and how many node ids the kernel holds.

Invariants:
- The process unmounts its own mount (and only it) and exits 0 when the
  control channel closes, on SIGTERM or SIGINT, or when the mount goes away;
  it exits 1 without "ready" when it cannot mount. A dead FUSE mount at PATH
  (a browser that was killed) is cleared first; a live one is refused.
- Descriptors received with a request are owned here: closed if the request
  is refused, otherwise handed to `set_volumes`, which owns them from then on.
- A `volumes` request is checked whole (`parse_volumes`: every entry a
  `messages.BrowserVolume`) before anything changes.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import resource
import signal
import sys
from typing import Any

import pyfuse3
import trio

from shadowfs import fuse_adapter, logsetup
from shadowfs.browser.nodes import MAX_VOLUME_INDEX
from shadowfs.browser.ops import FSNAME, MAX_WORKER_THREADS, BrowserOperations
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.messages import BrowserStatusReply, BrowserVolume, EmptyReply, ReadyEvent
from shadowfs.linux import mounts

log = logging.getLogger(__name__)


class ControlServer:
    """Answers the daemon's requests on the control channel."""

    def __init__(self, ops: BrowserOperations, mount: str) -> None:
        self.ops = ops
        self.mount = mount

    async def handle(self, request: frames.Frame, fds: list[int]) -> EmptyReply | BrowserStatusReply:
        op = request.get("op")
        if op == "volumes":
            reply = self._volumes(request, fds)
            await self.ops.refresh()
            return reply
        frames.close_fds(fds)
        if op == "refresh":
            await self.ops.refresh()
            return {}
        if op == "forget":
            volume, inos = request.get("volume"), request.get("inos")
            if not isinstance(volume, str) or not isinstance(inos, list) \
                    or not all(isinstance(ino, int) and not isinstance(ino, bool) for ino in inos):
                raise frames.RequestError("forget needs a volume name and a list of inode numbers")
            await self.ops.forget_damaged(volume, inos)
            return {}
        if op == "status":
            return self._status()
        raise frames.RequestError(f"unknown op {op!r}")

    def _volumes(self, request: frames.Frame, fds: list[int]) -> EmptyReply:
        try:
            volumes = parse_volumes(request.get("volumes"), len(fds))
        except ValueError as exc:
            frames.close_fds(fds)
            raise frames.RequestError(str(exc)) from None
        try:
            self.ops.set_volumes([(v["name"], v["index"], v["diff_area"], fd)
                                  for v, fd in zip(volumes, fds, strict=True)])
        except ValueError as exc:  # set_volumes owns the descriptors, also when it refuses
            raise frames.RequestError(str(exc)) from None
        return {}

    def _status(self) -> BrowserStatusReply:
        return {
            "mount": self.mount,
            "volumes": [{"name": v.name, "index": v.index, "diff_area": v.diff_area,
                         "diff_area_open": v.area is not None} for v in self.ops.volumes()],
            "sets": len(self.ops.snapshot_sets()),
            "known_nodes": self.ops.known_nodes(),  # lookups held by the kernel, in all
            "opens": self.ops.opens(),  # OPEN requests answered (few when reads go by inode)
        }


def parse_volumes(value: Any, fd_count: int) -> list[BrowserVolume]:
    """Validate the `volumes` list of a request; ValueError names what is wrong."""
    if not isinstance(value, list):
        raise ValueError("'volumes' must be a list")
    if len(value) != fd_count:
        raise ValueError(f"{len(value)} volumes but {fd_count} descriptors")
    result: list[BrowserVolume] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"volume #{position} is not an object")
        name, index, path = item.get("name"), item.get("index"), item.get("diff_area")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"volume #{position}: bad name {name!r}")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 < index <= MAX_VOLUME_INDEX:
            raise ValueError(f"volume {name}: index must be an integer in 1..{MAX_VOLUME_INDEX}")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"volume {name}: diff_area must be an absolute path")
        result.append({"name": name, "index": index, "diff_area": path})
    return result


async def _watch_signals(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got signal %d, unmounting", signum)
            cancel_scope.cancel()
            return


# pyfuse3 starts a reader task whenever none is idle and ends one whenever more than
# `min_tasks` are idle: with the default of 1, a handler that finishes without waiting
# makes it start and end a task for every request. Two idle readers keep that churn away.
MIN_FUSE_TASKS = 2


async def _serve_fuse(cancel_scope: trio.CancelScope) -> None:
    await pyfuse3.main(min_tasks=MIN_FUSE_TASKS)
    log.info("the mount went away")
    cancel_scope.cancel()


def prepare_mount_point(mount: str) -> None:
    """Create the mount point; clear a dead FUSE mount left there by a killed browser.

    A live FUSE mount at the path is refused (RuntimeError): two browsers must
    not stack on one path.
    """
    if mounts.is_fuse_mount(mount):
        try:
            os.stat(mount)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            log.warning("%s: clearing a dead FUSE mount left by an earlier browser", mount)
            mounts.unmount(mount)
        else:
            raise RuntimeError(f"{mount} is already a live FUSE mount")
    os.makedirs(mount, mode=0o755, exist_ok=True)


async def run(control_fd: int, mount: str, threads: int = 0) -> int:
    """Mount, announce ready, serve until told to stop; the exit status."""
    channel = Channel.from_fd(control_fd)
    _raise_fd_limit()
    features = fuse_adapter.binding()
    log.info("pyfuse3 %s: %s", pyfuse3.__version__, features)
    ops = BrowserOperations(threads, no_open=features.read_inode)
    try:
        prepare_mount_point(mount)
        fuse_adapter.raise_readahead_after_init(ops, mount)
        pyfuse3.init(ops, mount, fuse_adapter.mount_options(FSNAME, read_only=True))
    except (RuntimeError, OSError) as exc:
        log.error("cannot mount %s: %s", mount, exc)
        channel.close()
        ops.close()
        return 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_fuse, nursery.cancel_scope)
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            nursery.start_soon(ops.watch)
            server = ControlServer(ops, mount)
            try:
                ready: ReadyEvent = {"event": "ready"}
                await channel.send(ready)
                await channel.run(on_request=server.handle)
            except (frames.ChannelClosed, frames.ProtocolError, OSError) as exc:
                log.error("control channel failed: %s", exc)
            log.info("control channel closed, unmounting")
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        ops.close()
        channel.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowfs.browser.process",
                                     description="shadowfs snapshot browser process")
    parser.add_argument("--control-fd", type=int, required=True, help="inherited control socket")
    parser.add_argument("--mount", required=True, help="where to mount the snapshot browser")
    parser.add_argument("--threads", type=int, default=_default_threads(),
                        help="worker threads for blocking reads (0: serve them on the event loop)")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    if not 0 <= args.threads <= MAX_WORKER_THREADS:
        parser.error(f"--threads must be in 0..{MAX_WORKER_THREADS}")
    logsetup.configure("shadowfs-browser", logging.DEBUG if args.debug else None)
    return trio.run(run, args.control_fd, os.path.abspath(args.mount), args.threads)


def _raise_fd_limit() -> None:
    """Allow as many descriptors as the hard limit: every open file has one of its own,
    besides the cached ones (1024 per volume), so the usual soft limit of 1024 is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d: %s", soft, exc)


def _default_threads() -> int:
    """$SHADOWFS_BROWSER_THREADS (the daemon starts the browser without --threads)."""
    try:
        return int(os.environ.get("SHADOWFS_BROWSER_THREADS", "0"))
    except ValueError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
