"""Snapshots exposed at paths of the user's choice (`snapshot expose ID PATH`, diskshadow's expose).

One job: start, list and stop the `browser.expose_process` children that each show one snapshot,
read-only, at one path, with the volume's own inode numbers (so two exposed snapshots show an
unchanged file with the same number, size and times).

Invariants:
- One exposure per path; a path must be an existing, empty directory outside every volume, the
  mount root and the state directory (an exposure inside a volume would hide part of it).
- An exposure lives as long as its process and the daemon: `unexpose`, removing the volume,
  deleting the snapshot (by hand, prune or the diff area's limit) and stopping the daemon all end
  it, and the process unmounts on the way out. Nothing of it is kept on disk.
- A request returns once the mount is up (the child's ready line) or has failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from shadowfs import statedir
from shadowfs.daemon import requests
from shadowfs.daemon.children import child_env
from shadowfs.ipc import frames
from shadowfs.ipc.frames import Frame
from shadowfs.ipc.messages import ExposedSnapshot
from shadowfs.linux import mounts
from shadowfs.service.broker import SnapshotRow
from shadowfs.statedir import VolumeTable

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclasses.dataclass
class Exposure:
    path: str
    volume: str
    seq: int
    snapshot_id: str
    set_id: str
    process: trio.Process


class DaemonSide(Protocol):
    """What exposures need of the daemon."""

    mutation: trio.Lock  # snapshots change one request at a time
    table: VolumeTable
    backing_fds: dict[str, int]
    mount_root: str

    async def snapshots(self) -> list[tuple[str, SnapshotRow]]: ...  # every volume's


def _reply(exposure: Exposure) -> ExposedSnapshot:
    return {"snapshot": exposure.snapshot_id, "set_id": exposure.set_id, "volume": exposure.volume,
            "path": exposure.path}


def check_path(path: str, forbidden: Iterable[str]) -> str:
    """`path` made absolute, or RequestError saying why it cannot take an exposure."""
    if not os.path.isabs(path):
        raise frames.RequestError(f"expose path {path!r} must be absolute")
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise frames.RequestError(f"expose path {path} is not an existing directory")
    if os.listdir(real):
        raise frames.RequestError(f"expose path {path} is not empty")
    for other in forbidden:
        other = os.path.realpath(other)
        if real == other or real.startswith(other.rstrip("/") + "/"):
            raise frames.RequestError(f"expose path {path} lies in {other}, which shadowfs serves itself")
    return real


class Exposures:
    """The daemon's exposed snapshots, by path (trio thread only)."""

    def __init__(self, state_dir: str, daemon: DaemonSide) -> None:
        self.state_dir = state_dir
        self.by_path: dict[str, Exposure] = {}
        self._daemon = daemon

    # ---- requests ------------------------------------------------------------------------------

    async def op_expose(self, request: Frame) -> ExposedSnapshot:
        checked = requests.snapshot_expose_request(request)
        wanted = checked["snapshot"]
        daemon = self._daemon
        async with daemon.mutation:
            matches = [(v, r) for v, r in await daemon.snapshots()
                       if wanted in (r["snapshot_id"], r["set_id"])]
            if not matches:
                raise frames.RequestError(f"unknown snapshot or snapshot set {wanted}")
            if len(matches) > 1:
                raise frames.RequestError(f"set {wanted} has {len(matches)} volumes: expose one of its "
                                          "snapshots by its own id")
            volume, record = matches[0]
            forbidden = [p for v in daemon.table.volumes.values() for p in (v.backing, v.mount)]
            known = self.by_path.get(os.path.realpath(checked["path"]))
            if known is not None:
                raise frames.RequestError(f"{known.path} already shows snapshot {known.snapshot_id}")
            path = check_path(checked["path"], [*forbidden, daemon.mount_root, self.state_dir])
            backing_fd = daemon.backing_fds.get(volume)
            if backing_fd is None:
                raise frames.RequestError(f"volume {volume} is not protected now: its snapshots cannot "
                                          "be read")
            exposure = await self.expose(path, volume, record["seq"], record["snapshot_id"],
                                         record["set_id"], backing_fd)
        return _reply(exposure)

    async def op_unexpose(self, request: Frame) -> ExposedSnapshot:
        path = requests.snapshot_unexpose_request(request)["path"]
        async with self._daemon.mutation:
            return _reply(await self.unexpose(path))

    async def forget_gone(self) -> None:
        """End the exposures of snapshots that no longer exist (after deletions of any kind)."""
        if not self.by_path:
            return
        alive = {r["snapshot_id"] for _, r in await self._daemon.snapshots()}
        await self.drop(lambda e: e.snapshot_id not in alive, "the snapshot was deleted")

    # ---- the work ------------------------------------------------------------------------------

    def paths_of(self, snapshot_id: str) -> list[str]:
        return sorted(e.path for e in self.by_path.values() if e.snapshot_id == snapshot_id)

    async def expose(self, path: str, volume: str, seq: int, snapshot_id: str, set_id: str,
                     backing_fd: int) -> Exposure:
        """Mount snapshot `seq` of `volume` at `path` (checked by the caller)."""
        if path in self.by_path:
            raise frames.RequestError(f"{path} already shows snapshot {self.by_path[path].snapshot_id}")
        ready_read, ready_write = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "shadowfs.browser.expose_process", "--mount", path,
                 "--diff-area", statedir.diff_area_path(self.state_dir, volume), "--seq", str(seq),
                 "--backing-fd", str(backing_fd), "--ready-fd", str(ready_write)],
                pass_fds=(backing_fd, ready_write), env=child_env(), stdin=subprocess.DEVNULL)
        finally:
            os.close(ready_write)
        try:
            ready = await _read_ready(ready_read)
        finally:
            os.close(ready_read)
        if not ready:
            await _stop(process)
            raise frames.RequestError(f"snapshot {snapshot_id} could not be mounted at {path} "
                                      "(the daemon's log says why)")
        exposure = Exposure(path, volume, seq, snapshot_id, set_id, process)
        self.by_path[path] = exposure
        log.info("exposed snapshot %s of volume %s at %s", snapshot_id, volume, path)
        return exposure

    async def unexpose(self, path: str) -> Exposure:
        real = os.path.realpath(path) if os.path.isabs(path) else path
        exposure = self.by_path.pop(real, None)
        if exposure is None:
            raise frames.RequestError(f"no snapshot is exposed at {path}")
        await _end(exposure)
        log.info("unexposed snapshot %s at %s", exposure.snapshot_id, exposure.path)
        return exposure

    async def drop(self, gone: Callable[[Exposure], bool], why: str) -> None:
        """End every exposure `gone` says must go (its volume or snapshot went)."""
        for exposure in [e for e in self.by_path.values() if gone(e)]:
            del self.by_path[exposure.path]
            await _end(exposure)
            log.info("unexposed snapshot %s at %s: %s", exposure.snapshot_id, exposure.path, why)

    async def stop_all(self) -> None:
        await self.drop(lambda _e: True, "the daemon stops")


async def _read_ready(fd: int) -> bool:
    stream = trio.lowlevel.FdStream(os.dup(fd))
    try:
        with trio.move_on_after(READY_TIMEOUT):
            return (await stream.receive_some(64)).startswith(b"ready")
        return False
    finally:
        await stream.aclose()


async def _end(exposure: Exposure) -> None:
    await _stop(exposure.process)
    # a process that died before it could unmount leaves a dead mount behind: take it away
    await trio.to_thread.run_sync(mounts.unmount_if_ours, exposure.path)


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
        return
    log.warning("expose process %d did not stop; killing it", process.pid)
    with trio.CancelScope(shield=True):
        process.kill()
        await process.wait()


__all__ = ["Exposure", "Exposures", "check_path"]
