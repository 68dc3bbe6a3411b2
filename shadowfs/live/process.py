"""The live mount process of one volume: ``python -m shadowfs.mountproc ...``.

One job: own one volume's live mount and diff area for the daemon. It opens
the backing directory before mounting (so it can mount over it, in place),
prepares ``<backing>/.shadowfs/graveyard``, opens the diff area and its group
committer, mounts `livefs.LiveOperations`, and serves the control channel
(ARCHITECTURE.md, "daemon -> mount process"): hold / commit / release (the
mount side of DESIGN section 4), delete, set_max, status.

Invariants:
- The trio thread never blocks on its own mount: syncfs of the live mount and
  the first probe of the mount run in worker threads.
- A snapshot is recorded only while the gate is held, and `newest` is updated
  before the gate can open again, so no change slips between the instant and
  the capture rule that protects it. A hold that outlives its timeout opens
  the gate itself, and a later commit fails.
- The gate measures how long it stays closed; whatever opens it (`release`,
  or `commit` with `"release": true`, which saves the daemon a round trip
  while writes wait) replies with that time as `held_ms`.
- `newest` is always re-read from the diff area after a job that may change
  it, so concurrent commits and deletes cannot leave it stale.
- When the diff area outgrows its limit the oldest snapshot is deleted (with a
  logged warning and a `snapshot_deleted` event), never a silently wrong one.
- Graveyard entries no remaining snapshot can see are removed at start and
  after every deletion.
- On SIGTERM, SIGINT or the end of the control channel the mount is unmounted
  and the process exits 0.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import lmdb
import pyfuse3
import trio

from shadowfs import fuse_adapter
from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import remove_from_graveyard
from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import SnapshotRecord
from shadowfs.errors import StartupError
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.linux import mounts, syscalls
from shadowfs.live.ops import CACHE_TIMEOUT, IN_PLACE_CACHE_TIMEOUT, LiveOperations, run_job

log = logging.getLogger(__name__)

MOUNT_PROBE_TIMEOUT = 30.0
DEFAULT_HOLD_TIMEOUT = 10.0
MAX_FUSE_TASKS = 512  # requests parked at a held gate must not starve reads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shadowfs.mountproc",
                                     description="Live mount of one shadowfs volume.")
    parser.add_argument("--control-fd", type=int, required=True,
                        help="connected Unix socket to the daemon")
    parser.add_argument("--volume", required=True, help="volume name")
    parser.add_argument("--backing", required=True, help="backing directory")
    parser.add_argument("--mount", required=True, help="mount point (the backing directory: in place)")
    parser.add_argument("--diff-area", required=True, help="diff area directory (LMDB environment)")
    parser.add_argument("--max-diff-area", type=int, default=0,
                        help="bytes the diff area may hold before the oldest snapshot goes (0: no limit)")
    return parser.parse_args(argv)


def prepare_graveyard(root_fd: int) -> int:
    """Create ``.shadowfs/graveyard`` (mode 0700) if needed; return an O_RDONLY descriptor of it."""
    fds = []
    try:
        parent = root_fd
        for name in (schema.HIDDEN_DIR, schema.GRAVEYARD):
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            fds.append(fd)
            st = os.fstat(fd)
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
                os.chown(fd, 0, 0)
                os.chmod(fd, 0o700)
            parent = fd
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise StartupError(f"cannot prepare {schema.HIDDEN_DIR.decode()}/{schema.GRAVEYARD.decode()} "
                           f"in the backing directory: {exc.strerror}") from exc
    os.close(fds[0])
    return fds[1]


class MountService:
    """The control side of one live mount: hold gate driving, snapshot records, limits."""

    def __init__(self, args: argparse.Namespace, control: socket.socket, root_fd: int,
                 graveyard_fd: int, area: DiffArea) -> None:
        self.volume: str = args.volume
        self.mount: str = os.path.abspath(args.mount)
        self.control = control
        self.max_bytes: int = args.max_diff_area
        self.root_fd = root_fd
        self.graveyard_fd = graveyard_fd
        self.area = area
        self.committer = Committer(area.env, before_commit=area.before_commit,
                                   after_commit=self._after_commit,
                                   name=f"shadowfs-committer-{self.volume}")
        self.ops: LiveOperations | None = None
        self.channel: Channel | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._auto_deleting = False  # committer thread only
        self._hold_id = 0
        self._hold_expired = False
        self._hold_committed = False
        self._holding = False
        self._hold_scope: trio.CancelScope | None = None
        self._commit_lock: trio.Lock | None = None
        self._stopping = False

    # ---- before the mount ------------------------------------------------

    def newest(self) -> int | None:
        with self.area.read() as txn:
            return self.area.newest_seq(txn)

    def reconcile_graveyard(self) -> None:
        """Give graveyard names that a crash left without a record a record, or remove them."""
        self.committer.run(self._reconcile_job)
        self.committer.run(self._gc_job)

    def _reconcile_job(self, txn: lmdb.Transaction) -> None:
        newest = self.area.newest_seq(txn)
        with os.scandir(self.graveyard_fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            if not name.isdigit():
                log.warning("unexpected name %r in the graveyard left alone", name)
                continue
            ino = int(name)
            if self.area.graveyard_has(txn, ino):
                continue
            st = os.stat(name, dir_fd=self.graveyard_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                log.info("graveyard link of inode %d whose removal never happened: dropped", ino)
                os.unlink(name, dir_fd=self.graveyard_fd)
            elif newest is None:
                remove_from_graveyard(self.graveyard_fd, ino)
            else:
                log.info("graveyard entry of inode %d without a record: kept until snapshot %d goes",
                         ino, newest)
                self.area.graveyard_add(txn, ino, newest)

    def _gc_job(self, txn: lmdb.Transaction) -> int:
        """Free what deleted snapshots no longer need: block extents, graveyard objects."""
        self.area.reclaim(txn)
        expired = self.area.graveyard_expired(txn)
        for ino in expired:
            remove_from_graveyard(self.graveyard_fd, ino)
            self.area.graveyard_remove(txn, ino)
        return len(expired)

    # ---- the trio side ---------------------------------------------------

    async def main(self, ops: LiveOperations) -> None:
        self.ops = ops
        self.token = trio.lowlevel.current_trio_token()
        self._commit_lock = trio.Lock()
        self.channel = Channel.from_socket(self.control)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._fuse_main)
                nursery.start_soon(self._watch_signals)
                await self._probe_mount()
                if self.max_bytes > 0:
                    self.committer.submit(_noop)  # enforce the limit on what is stored already
                try:
                    await self.channel.send({"event": "ready"})
                    log.info("mounted %s (newest snapshot %s)", self.mount, ops.newest)
                    await self.channel.run(on_request=self._serve)
                    log.info("control channel closed: unmounting")
                except (frames.ChannelClosed, BrokenPipeError, ConnectionResetError,
                        trio.ClosedResourceError):
                    log.info("control channel lost: unmounting")
                except frames.ProtocolError as exc:
                    log.error("control channel broken (%s): unmounting", exc)
                self.stop()
        finally:
            self.channel.close()

    async def _fuse_main(self) -> None:
        try:
            await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
        finally:
            if self.nursery is not None:
                self.nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: unmounting", signal.Signals(signum).name)
                self.stop()
                return

    async def _probe_mount(self) -> None:
        """Wait until the kernel talks to this process through the new mount."""
        with trio.fail_after(MOUNT_PROBE_TIMEOUT):
            await trio.to_thread.run_sync(os.stat, self.mount, abandon_on_cancel=True)

    def stop(self) -> None:
        """End the FUSE loop (the nursery then ends); changes parked at the gate go through."""
        if self._stopping:
            return
        self._stopping = True
        assert self.ops is not None
        self.ops.gate.release()
        pyfuse3.terminate()

    # ---- control requests ------------------------------------------------

    async def _serve(self, request: frames.Frame, fds: list[int]) -> frames.Frame:
        frames.close_fds(fds)
        handlers: dict[str, Callable[[frames.Frame], Awaitable[frames.Frame]]] = {
            "hold": self._hold, "commit": self._commit, "release": self._release,
            "delete": self._delete, "set_max": self._set_max, "status": self._status,
        }
        handler = handlers.get(str(request.get("op")))
        if handler is None:
            raise frames.RequestError(f"unknown request {request.get('op')!r}")
        return await handler(request)

    async def _hold(self, request: frames.Frame) -> frames.Frame:
        assert self.ops is not None and self.nursery is not None
        timeout = _number(request, "timeout", DEFAULT_HOLD_TIMEOUT)
        if self.ops.gate.held or self._holding:
            raise frames.RequestError(f"volume {self.volume} is already held")
        self._holding = True
        # a `release` that arrives while this hold is still flushing or draining cancels it,
        # so a late hold can never close the gate after the daemon gave up on the set
        scope = self._hold_scope = trio.CancelScope()
        with scope:
            try:
                await self._flush_and_close(timeout)
            finally:
                self._holding = False
        self._hold_scope = None
        if scope.cancelled_caught:
            self.ops.gate.release()
            raise frames.RequestError(f"the hold of volume {self.volume} was released before it was "
                                   "in place")
        self._hold_id += 1
        self._hold_expired = False
        self._hold_committed = False
        self.nursery.start_soon(self._expire_hold, self._hold_id, timeout)
        return {}

    async def _flush_and_close(self, timeout: float) -> None:
        """DESIGN section 4, step 2: flush while changes flow, close the gate, drain, flush again.

        The second flush covers what changes applied after the first one began left
        in the backing filesystem's cache; when no change passed the gate since then
        (none in flight either), there is nothing for it to do and it is skipped, so
        an idle volume is held only for the commit of the snapshot record.
        """
        assert self.ops is not None
        gate = self.ops.gate
        entered, busy = gate.entered, gate.in_flight > 0
        await trio.to_thread.run_sync(self._sync_mount)
        await trio.to_thread.run_sync(syscalls.syncfs, self.root_fd)
        try:
            await gate.hold(timeout)
        except trio.TooSlowError:
            raise frames.RequestError(f"changes in flight on volume {self.volume} did not drain "
                                   f"within {timeout:g} s") from None
        if not busy and gate.entered == entered:
            return
        try:
            await trio.to_thread.run_sync(syscalls.syncfs, self.root_fd)
        except BaseException:
            gate.release()
            raise

    def _sync_mount(self) -> None:
        fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)

    async def _expire_hold(self, hold_id: int, timeout: float) -> None:
        assert self.ops is not None and self._commit_lock is not None
        await trio.sleep(timeout)
        async with self._commit_lock:
            if hold_id == self._hold_id and self.ops.gate.held:
                self.ops.gate.release()
                self._hold_expired = True
                log.warning("hold of volume %s expired after %g s: changes flow again", self.volume,
                            timeout)

    async def _commit(self, request: frames.Frame) -> frames.Frame:
        assert self.ops is not None and self._commit_lock is not None
        fields = {key: _string(request, key) for key in ("snapshot_id", "set_id", "created")}
        release = request.get("release", False) is True
        async with self._commit_lock:
            if not self.ops.gate.held:
                if self._hold_expired:
                    raise frames.RequestError(f"the hold of volume {self.volume} expired before the "
                                           "commit; no snapshot was recorded")
                raise frames.RequestError(f"volume {self.volume} is not held; hold it before commit")
            if self._hold_committed:
                raise frames.RequestError(f"a snapshot was already recorded in this hold of {self.volume}")
            record: SnapshotRecord = await run_job(
                self.committer, lambda txn: self.area.record_snapshot(txn, **fields))
            self._hold_committed = True
            self._refresh_newest()
            reply: frames.Frame = {"seq": record.seq}
            if release:
                # only now that `newest` names the new snapshot: changes let through are
                # captured under it
                reply.update(self._open_gate())
        log.info("snapshot %s recorded as sequence %d", record.snapshot_id, record.seq)
        return reply

    async def _release(self, request: frames.Frame) -> frames.Frame:
        """Open the gate (a hold still flushing is cancelled); see `_open_gate` for the reply."""
        if self._hold_scope is not None:
            self._hold_scope.cancel()
        return self._open_gate()

    def _open_gate(self) -> frames.Frame:
        """Open the gate; `{"held_ms"}`: how long it was closed, if it was (else `{}`)."""
        assert self.ops is not None
        self._hold_id += 1  # the hold's expiry timer has nothing left to do
        held = self.ops.gate.release()
        return {} if held is None else {"held_ms": round(held * 1000.0, 3)}

    async def _delete(self, request: frames.Frame) -> frames.Frame:
        seq = _integer(request, "seq")

        def job(txn: lmdb.Transaction) -> int:
            return self.area.delete_snapshot(txn, seq)

        try:
            freed = await run_job(self.committer, job)
        except DiffAreaError as exc:
            raise frames.RequestError(str(exc)) from None
        self._refresh_newest()
        log.info("snapshot sequence %d deleted, %d bytes freed", seq, freed)
        await self._collect_graveyard()
        return {"freed": freed}

    async def _set_max(self, request: frames.Frame) -> frames.Frame:
        value = _integer(request, "bytes")
        if value < 0:
            raise frames.RequestError("bytes must be >= 0 (0: no limit)")
        self.max_bytes = value
        self.committer.submit(_noop)  # the after-commit hook enforces the new limit
        return {}

    async def _status(self, request: frames.Frame) -> frames.Frame:
        assert self.ops is not None
        with self.area.read() as txn:
            snapshots = [record.seq for record in self.area.snapshot_list(txn)]
            used = self.area.used_bytes(txn)
        return {"volume": self.volume, "mount": self.mount, "newest": self.ops.newest,
                "held": self.ops.gate.held, "snapshots": snapshots, "used_bytes": used,
                "max_bytes": self.max_bytes}

    def _refresh_newest(self) -> None:
        assert self.ops is not None
        self.ops.set_newest(self.newest())

    async def _collect_graveyard(self) -> None:
        removed = await run_job(self.committer, self._gc_job)
        if removed:
            log.info("graveyard: %d objects no snapshot needs were removed", removed)

    # ---- diff area limit (committer thread) ------------------------------

    def _after_commit(self) -> None:
        if self._auto_deleting or self.max_bytes <= 0:
            return
        if self.area.used_bytes() <= self.max_bytes:
            return
        self._auto_deleting = True
        try:
            self.committer.submit(self._delete_oldest_job, self._deleted_oldest)
        except RuntimeError:  # stopping
            self._auto_deleting = False

    def _delete_oldest_job(self, txn: lmdb.Transaction) -> tuple[SnapshotRecord, int, int] | None:
        oldest = self.area.oldest_seq(txn)
        if oldest is None or self.max_bytes <= 0:
            return None
        used = self.area.used_bytes(txn)
        if used <= self.max_bytes:
            return None
        record = self.area.snapshot(txn, oldest)
        assert record is not None
        return record, self.area.delete_snapshot(txn, oldest), used

    def _deleted_oldest(self, result: Any, error: BaseException | None) -> None:
        self._auto_deleting = False
        if error is not None:
            log.error("could not delete the oldest snapshot of a full diff area: %s", error)
            return
        if result is None:
            return
        record, freed, used = result
        self.committer.submit(self._gc_job)
        log.warning("diff area of volume %s is full (%d bytes used, limit %d): deleted its oldest "
                    "snapshot %s (sequence %d), %d bytes freed", self.volume, used, self.max_bytes,
                    record.snapshot_id, record.seq, freed)
        if self.token is not None:
            try:
                self.token.run_sync_soon(self._announce_deletion, record)
            except trio.RunFinishedError:
                pass

    def _announce_deletion(self, record: SnapshotRecord) -> None:
        if self.ops is not None:
            self._refresh_newest()
        if self.nursery is not None and not self._stopping:
            self.nursery.start_soon(self._after_auto_delete, record)

    async def _after_auto_delete(self, record: SnapshotRecord) -> None:
        assert self.channel is not None
        try:
            await self.channel.send({"event": "snapshot_deleted", "seq": record.seq,
                                     "snapshot_id": record.snapshot_id, "reason": "diff area full"})
        except (frames.ChannelClosed, OSError, trio.ClosedResourceError) as exc:
            log.warning("could not tell the daemon about the deleted snapshot: %s", exc)
        await self._collect_graveyard()


def _noop(txn: lmdb.Transaction) -> None:
    return None


def _number(request: frames.Frame, key: str, default: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise frames.RequestError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _integer(request: frames.Frame, key: str) -> int:
    value = request.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise frames.RequestError(f"{key} must be an integer, not {value!r}")
    return value


def _string(request: frames.Frame, key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise frames.RequestError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _open_backing(backing: str, mount: str) -> int:
    if mounts.is_fuse_mount(mount):
        raise StartupError(f"{mount} already has a FUSE mount (left behind by a dead mount "
                           "process?); unmount it first")
    if mount != backing and mounts.is_fuse_mount(backing):
        raise StartupError(f"backing directory {backing} is itself a FUSE mount")
    if not os.path.isdir(mount):
        raise StartupError(f"mount point {mount} is not a directory")
    try:
        root_fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(f"cannot open backing directory {backing}: {exc.strerror}") from exc
    try:
        syscalls.check_backing_fs(backing)
        _check_open_by_ino(root_fd, backing)
    except ValueError as exc:
        os.close(root_fd)
        raise StartupError(str(exc)) from exc
    return root_fd


def _check_open_by_ino(root_fd: int, backing: str) -> None:
    """Raise ValueError unless an inode number alone reaches the object (tmpfs, e.g., does not)."""
    root = os.fstat(root_fd)
    try:
        fd = syscalls.open_by_ino(root_fd, root.st_ino, os.O_PATH)
    except OSError as exc:
        raise ValueError(f"{backing}: objects cannot be opened by inode number on this filesystem "
                         f"({exc.strerror}); shadowfs needs ext4") from exc
    try:
        found = os.fstat(fd)
    finally:
        os.close(fd)
    if (found.st_dev, found.st_ino) != (root.st_dev, root.st_ino):
        raise ValueError(f"{backing}: opening by inode number reached another object; shadowfs needs ext4")


def _control_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"--control-fd {fd} is not a usable socket: {exc.strerror}") from exc
    if sock.family != socket.AF_UNIX:
        raise StartupError(f"--control-fd {fd} is not a Unix socket")
    return sock


def run(args: argparse.Namespace) -> int:
    backing = os.path.abspath(args.backing)
    mount = os.path.abspath(args.mount)
    os.umask(0)  # modes come from the caller's request (its umask is applied by livefs)
    control = _control_socket(args.control_fd)
    root_fd = _open_backing(backing, mount)
    graveyard_fd = prepare_graveyard(root_fd)
    try:
        area = DiffArea.open(args.diff_area, volume=args.volume)
    except DiffAreaError as exc:
        raise StartupError(str(exc)) from exc
    service = MountService(args, control, root_fd, graveyard_fd, area)
    try:
        service.reconcile_graveyard()
        timeout = IN_PLACE_CACHE_TIMEOUT if mount == backing else CACHE_TIMEOUT
        ops = LiveOperations(root_fd, graveyard_fd, area, service.committer, service.newest(),
                             cache_timeout=timeout)
        try:
            fuse_adapter.raise_readahead_after_init(ops, mount)
            pyfuse3.init(ops, mount, fuse_adapter.mount_options(f"shadowfs-{args.volume}", read_only=False))
        except RuntimeError as exc:
            raise StartupError(f"cannot mount {mount}: {exc}") from exc
        try:
            trio.run(service.main, ops)
        finally:
            pyfuse3.close(unmount=True)
            ops.close()
            log.info("unmounted %s", mount)
    finally:
        service.committer.stop()
        area.close()
        os.close(graveyard_fd)
        os.close(root_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format=f"%(asctime)s shadowfs-mount[{args.volume}] %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc if exc.errno != errno.ENOTCONN else f"{exc} (a dead FUSE mount?)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
