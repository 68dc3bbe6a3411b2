"""The control side of one live mount: snapshots recorded while writes are held, limits.

One job: carry out the daemon's requests on one volume (design §2.5, "daemon ->
mount process"): hold / commit / release (the mount side of design §4.2),
delete, set_held, set_max, status; own the volume's diff area, its group committer, its
capture planner, graveyard and hold gate, which the FUSE handlers
(`live.ops`) use. No pyfuse3 here: `live.process` mounts and passes in how to
serve and how to stop the mount.

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
- When the diff area outgrows its limit the oldest snapshot that is not held
  is deleted (with a logged warning and a `snapshot_deleted` event), never a
  silently wrong one; when every snapshot is held, none is deleted (logged
  once). A held snapshot is deleted only by a `delete` with `force`.
- Every request is checked field by field (`_hold_request`, ...) into its
  `ipc.messages` type before it is acted on; a bad field is a RequestError
  naming it.
- Graveyard entries no remaining snapshot can see are removed at start and
  after every deletion.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import CaptureEngine
from shadowfs.capture.graveyard import Graveyard
from shadowfs.capture.planner import CapturePlanner
from shadowfs.diffarea.area import DiffArea, DiffAreaError, Txn
from shadowfs.diffarea.schema import Seq, SnapshotRecord
from shadowfs.errors import SnapshotHeld, StartupError
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.messages import (
    CommitReply,
    CommitRequest,
    DamageEvent,
    DeleteReply,
    DeleteRequest,
    EmptyReply,
    HoldRequest,
    MountReadyEvent,
    MountStatusReply,
    ReleaseReply,
    SetHeldRequest,
    SetMaxRequest,
    SnapshotDeletedEvent,
)
from shadowfs.linux import mounts, syscalls
from shadowfs.live.commit import commit
from shadowfs.live.gate import HoldGate
from shadowfs.live.lapse import Damage, LapseGuard

log = logging.getLogger(__name__)

MOUNT_PROBE_TIMEOUT = 30.0
MOUNT_CHECK_INTERVAL = 1.0
DAMAGE_PATHS = 20  # paths named in one damage event (the mount's log names each)
DAMAGE_INOS = 4096  # inodes named in one damage event, for the browser to forget
DEFAULT_HOLD_TIMEOUT = 10.0


class MountService:
    """The control side of one live mount: hold gate driving, snapshot records, limits."""

    def __init__(self, volume: str, mount: str, max_bytes: int, control: socket.socket | None, root_fd: int,
                 graveyard_fd: int, area: DiffArea) -> None:
        self.volume = volume
        self.mount = os.path.abspath(mount)
        self.control = control
        self.listener: socket.socket | None = None  # where the next daemon connects
        self.guard: LapseGuard | None = None
        self.handoff_fds: list[tuple[str, int]] = []  # what a daemon keeps for our successor
        self.took_over = False
        self.mount_dev = ""
        self.gone = False  # the mount was taken away (not stopped)
        self.max_bytes = max_bytes
        self.root_fd = root_fd
        self.area = area
        self.committer = Committer(area.env, before_commit=area.before_commit,
                                   after_commit=self._after_commit,
                                   name=f"shadowfs-committer-{self.volume}")
        engine = CaptureEngine(area, root_fd)
        self.gate = HoldGate()
        self.planner = CapturePlanner(area, engine, self.committer, self.newest())
        self.graveyard = Graveyard(graveyard_fd, engine, self.committer)
        self._terminate: Callable[[], None] = _nothing
        self.channel: Channel | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._auto_deleting = False  # committer thread only
        self._all_held_logged = False  # committer thread only: "over the limit, all held" said once
        self._hold_id = 0
        self._hold_expired = False
        self._hold_committed = False
        self._holding = False
        self._hold_scope: trio.CancelScope | None = None
        self._commit_lock: trio.Lock | None = None
        self._stopping = False

    @classmethod
    def open(cls, volume: str, mount: str, max_bytes: int, control: socket.socket | None, root_fd: int,
             graveyard_fd: int, diff_area: str, *, blocks_on_volume: bool = False) -> MountService:
        """Open the volume's diff area and everything on top of it; StartupError if it cannot be.
        `blocks_on_volume`: a diff area created now keeps its block file on the volume."""
        try:
            area = DiffArea.open(diff_area, volume=volume, backing_fd=root_fd,
                                 blocks_on_volume=blocks_on_volume)
        except DiffAreaError as exc:
            raise StartupError(str(exc)) from exc
        try:
            return cls(volume, mount, max_bytes, control, root_fd, graveyard_fd, area)
        except BaseException:
            area.close()
            raise

    # ---- before the mount ------------------------------------------------

    def newest(self) -> Seq | None:
        with self.area.read() as txn:
            return self.area.newest_seq(txn)

    def reconcile_graveyard(self) -> None:
        """Give graveyard names that a crash left without a record a record, or remove them."""
        self.committer.run(self.graveyard.reconcile)
        self.committer.run(self.graveyard.collect)

    def close(self) -> None:
        """After the mount is gone: finish the committer's queue, close the diff area."""
        self.committer.stop()
        self.area.close()

    # ---- the trio side ---------------------------------------------------

    async def main(self, fuse_main: Callable[[], Awaitable[None]], terminate: Callable[[], None]) -> None:
        """Protect the volume until told to stop: serve the mount (`fuse_main`, ended by `terminate`:
        pyfuse3's, passed in, as this module does not use pyfuse3), mark what bypasses it (`guard`),
        and serve one daemon at a time on the control channel.

        A daemon that goes away (stopped, restarted, killed) takes nothing with it: the mount goes on
        and the next daemon is accepted on `listener` (design §9.1). Only a `stop` request, SIGTERM or
        SIGINT unmount; a mount taken away from under the process ends it too (`gone` is then set)."""
        self._terminate = terminate
        self.token = trio.lowlevel.current_trio_token()
        self._commit_lock = trio.Lock()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._fuse_main, fuse_main)
                nursery.start_soon(self._watch_signals)
                await self._probe_mount()
                top = mounts.top_mount(self.mount)
                self.mount_dev = top[1] if top is not None else ""
                if self.guard is not None:
                    nursery.start_soon(self.guard.watch_changes)
                nursery.start_soon(self._watch_mount)
                if self.max_bytes > 0:
                    self.committer.submit(_noop)  # enforce the limit on what is stored already
                log.info("mounted %s (newest snapshot %s)", self.mount, self.planner.newest)
                while not self.stopping():
                    if self.control is not None:
                        await self._serve_daemon(Channel.from_socket(self.control))
                        self.control = None
                    if not self.stopping():
                        self.control = await self._next_daemon()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish_guard()

    async def _finish_guard(self) -> None:
        """Mark what the watcher still holds, and record when protection ended."""
        if self.guard is None:
            return
        try:
            await self.guard.handle_pending()
        except Exception as exc:  # the end must be recorded whatever happened
            log.error("could not handle the last changes the watcher saw: %s", exc)
        self.guard.end()

    async def _serve_daemon(self, channel: Channel) -> None:
        """One daemon's session: the ready event with our descriptors, then its requests."""
        self.channel = channel
        try:
            ready: MountReadyEvent = {
                "event": "ready", "pid": os.getpid(), "volume": self.volume, "mount": self.mount,
                "mount_dev": self.mount_dev, "fds": [name for name, _ in self.handoff_fds],
                "took_over": self.took_over}
            await channel.send(ready, fds=[fd for _, fd in self.handoff_fds])
            await channel.run(on_request=self._serve)
            log.info("the daemon closed the control channel; still protecting %s", self.mount)
        except (frames.ChannelClosed, BrokenPipeError, ConnectionResetError, trio.ClosedResourceError):
            log.info("control channel lost; still protecting %s", self.mount)
        except frames.ProtocolError as exc:
            log.error("control channel broken (%s); still protecting %s", exc, self.mount)
        finally:
            self.channel = None
            channel.close()
            if self.gate.held and not self._stopping:
                self._open_gate()  # a hold dies with the daemon that asked for it

    async def _next_daemon(self) -> socket.socket | None:
        """Wait for the next daemon on `listener` (root or our own user only); None when stopping."""
        if self.listener is None:
            await trio.sleep_forever()
        listener = trio.socket.from_stdlib_socket(self.listener)
        while not self.stopping():
            conn, _ = await listener.accept()
            _, uid, _ = frames.peer_credentials(conn)
            if uid in (0, os.getuid()):
                log.info("a daemon connected; serving it")
                sock = socket.socket(fileno=conn.detach())
                return sock
            log.warning("refused a control connection from uid %d", uid)
            conn.close()
        return None

    async def _watch_mount(self) -> None:
        """Notice a mount taken away from under us (`umount`, `umount -l`): then end, so that the
        daemon mounts the volume again (the watcher saw every change until then)."""
        while True:
            await trio.sleep(MOUNT_CHECK_INTERVAL)
            top = await trio.to_thread.run_sync(mounts.top_mount, self.mount)
            if top != (mounts.SHADOWFS_FUSE_TYPE, self.mount_dev):
                log.warning("the live mount at %s was taken away (found %s); ending so that it is "
                            "mounted again", self.mount, top)
                self.gone = True
                self.stop()
                return

    async def _fuse_main(self, fuse_main: Callable[[], Awaitable[None]]) -> None:
        try:
            await fuse_main()
            if not self._stopping:
                log.warning("the kernel ended the FUSE session of %s (unmounted?)", self.mount)
                self.gone = True
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

    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """End the FUSE loop (the nursery then ends); changes parked at the gate go through."""
        if self._stopping:
            return
        self._stopping = True
        self.gate.release()
        self._terminate()

    # ---- control requests ------------------------------------------------

    async def _serve(self, request: frames.Frame, fds: list[int]) -> frames.Message:
        frames.close_fds(fds)
        handlers: dict[str, Callable[[frames.Frame], Awaitable[frames.Message]]] = {
            "hold": self._hold, "commit": self._commit, "release": self._release,
            "delete": self._delete, "set_held": self._set_held, "set_max": self._set_max,
            "status": self._status,
            "stop": self._stop_request,
        }
        handler = handlers.get(str(request.get("op")))
        if handler is None:
            raise frames.RequestError(f"unknown request {request.get('op')!r}")
        return await handler(request)

    async def _hold(self, frame: frames.Frame) -> EmptyReply:
        assert self.nursery is not None
        timeout = _hold_request(frame).get("timeout", DEFAULT_HOLD_TIMEOUT)
        if self.gate.held or self._holding:
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
            self.gate.release()
            raise frames.RequestError(f"the hold of volume {self.volume} was released before it was "
                                   "in place")
        self._hold_id += 1
        self._hold_expired = False
        self._hold_committed = False
        self.nursery.start_soon(self._expire_hold, self._hold_id, timeout)
        return {}

    async def _flush_and_close(self, timeout: float) -> None:
        """Design §4.2: flush while changes flow, close the gate, drain, flush again.

        The second flush covers what changes applied after the first one began left
        in the backing filesystem's cache; when no change passed the gate since then
        (none in flight either), there is nothing for it to do and it is skipped, so
        an idle volume is held only for the commit of the snapshot record.
        """
        gate = self.gate
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
        assert self._commit_lock is not None
        await trio.sleep(timeout)
        async with self._commit_lock:
            if hold_id == self._hold_id and self.gate.held:
                self.gate.release()
                self._hold_expired = True
                log.warning("hold of volume %s expired after %g s: changes flow again", self.volume,
                            timeout)

    async def _commit(self, frame: frames.Frame) -> CommitReply:
        assert self._commit_lock is not None
        request = _commit_request(frame)
        snapshot_id, set_id, created = request["snapshot_id"], request["set_id"], request["created"]
        async with self._commit_lock:
            if not self.gate.held:
                if self._hold_expired:
                    raise frames.RequestError(f"the hold of volume {self.volume} expired before the "
                                           "commit; no snapshot was recorded")
                raise frames.RequestError(f"volume {self.volume} is not held; hold it before commit")
            if self._hold_committed:
                raise frames.RequestError(f"a snapshot was already recorded in this hold of {self.volume}")
            record: SnapshotRecord = await commit(
                self.committer, lambda txn: self.area.record_snapshot(
                    txn, snapshot_id=snapshot_id, set_id=set_id, created=created))
            self._hold_committed = True
            self._refresh_newest()
            reply: CommitReply = {"seq": record.seq}
            if request.get("release", False):
                # only now that `newest` names the new snapshot: changes let through are
                # captured under it
                opened = self._open_gate()
                if "held_ms" in opened:
                    reply["held_ms"] = opened["held_ms"]
        log.info("snapshot %s recorded as sequence %d", record.snapshot_id, record.seq)
        return reply

    async def _release(self, frame: frames.Frame) -> ReleaseReply:
        """Open the gate (a hold still flushing is cancelled); see `_open_gate` for the reply."""
        if self._hold_scope is not None:
            self._hold_scope.cancel()
        return self._open_gate()

    def _open_gate(self) -> ReleaseReply:
        """Open the gate; `{"held_ms"}`: how long it was closed, if it was (else `{}`)."""
        self._hold_id += 1  # the hold's expiry timer has nothing left to do
        held = self.gate.release()
        return {} if held is None else {"held_ms": round(held * 1000.0, 3)}

    async def _delete(self, frame: frames.Frame) -> DeleteReply:
        request = _delete_request(frame)
        seq = Seq(request["seq"])

        def job(txn: Txn) -> int:
            record = self.area.snapshot(txn, seq)
            if record is not None and record.held is not None and not request.get("force", False):
                raise SnapshotHeld(f"snapshot {record.snapshot_id} is held (since {record.held}): "
                                   "release it first, or delete with force")
            return self.area.delete_snapshot(txn, seq)

        try:
            freed = await commit(self.committer, job)
        except DiffAreaError as exc:
            raise frames.RequestError(str(exc)) from None
        self._refresh_newest()
        log.info("snapshot sequence %d deleted, %d bytes freed", seq, freed)
        await self._collect_graveyard()
        return {"freed": freed}

    async def _set_held(self, frame: frames.Frame) -> EmptyReply:
        request = _set_held_request(frame)

        def job(txn: Txn) -> SnapshotRecord:
            return self.area.set_held(txn, Seq(request["seq"]), request["held"])

        try:
            record = await commit(self.committer, job)
        except DiffAreaError as exc:
            raise frames.RequestError(str(exc)) from None
        log.info("snapshot %s (sequence %d) %s", record.snapshot_id, record.seq,
                 "released" if record.held is None else "held")
        if record.held is None:
            self.committer.submit(_noop)  # the limit may now delete it
        return {}

    async def _set_max(self, frame: frames.Frame) -> EmptyReply:
        self.max_bytes = _set_max_request(frame)["bytes"]
        self.committer.submit(_noop)  # the after-commit hook enforces the new limit
        return {}

    async def _stop_request(self, frame: frames.Frame) -> EmptyReply:
        """End protection (`volume remove`, `shadowfs daemon stop --unprotect`): after the reply."""
        log.info("asked to stop protecting %s: unmounting", self.mount)
        assert self.token is not None
        self.token.run_sync_soon(self.stop)
        return {}

    async def _status(self, frame: frames.Frame) -> MountStatusReply:
        with self.area.read() as txn:
            snapshots = [int(record.seq) for record in self.area.snapshot_list(txn)]
            used = self.area.used_bytes(txn)
        return {"volume": self.volume, "mount": self.mount, "newest": self.planner.newest,
                "held": self.gate.held, "snapshots": snapshots, "used_bytes": used,
                "max_bytes": self.max_bytes}

    def _refresh_newest(self) -> None:
        self.planner.set_newest(self.newest())

    async def _collect_graveyard(self) -> None:
        removed = await commit(self.committer, self.graveyard.collect)
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

    def _delete_oldest_job(self, txn: Txn) -> tuple[SnapshotRecord, int, int] | None:
        if self.max_bytes <= 0:
            return None
        used = self.area.used_bytes(txn)
        if used <= self.max_bytes:
            self._all_held_logged = False
            return None
        record = self.area.oldest_unheld(txn)
        if record is None:
            if not self._all_held_logged and self.area.oldest_seq(txn) is not None:
                log.error("diff area of volume %s is over its limit (%d bytes used, limit %d) and "
                          "every snapshot is held: none is deleted", self.volume, used, self.max_bytes)
                self._all_held_logged = True
            return None
        return record, self.area.delete_snapshot(txn, record.seq), used

    def _deleted_oldest(self, result: Any, error: BaseException | None) -> None:
        self._auto_deleting = False
        if error is not None:
            log.error("could not delete the oldest snapshot of a full diff area: %s", error)
            return
        if result is None:
            return
        record, freed, used = result
        self.committer.submit(self.graveyard.collect)
        log.warning("diff area of volume %s is full (%d bytes used, limit %d): deleted its oldest "
                    "snapshot %s (sequence %d), %d bytes freed", self.volume, used, self.max_bytes,
                    record.snapshot_id, record.seq, freed)
        if self.token is not None:
            try:
                self.token.run_sync_soon(self._announce_deletion, record)
            except trio.RunFinishedError:
                pass

    def _announce_deletion(self, record: SnapshotRecord) -> None:
        self._refresh_newest()
        if self.nursery is not None and not self._stopping:
            self.nursery.start_soon(self._after_auto_delete, record)

    async def _after_auto_delete(self, record: SnapshotRecord) -> None:
        event: SnapshotDeletedEvent = {"event": "snapshot_deleted", "seq": record.seq,
                                       "snapshot_id": record.snapshot_id, "reason": "diff area full"}
        await self.tell_daemon(event)
        await self._collect_graveyard()

    async def tell_daemon(self, event: SnapshotDeletedEvent | DamageEvent) -> None:
        """Send `event` to the daemon, if one is connected (the log has it either way)."""
        channel = self.channel
        if channel is None:
            return
        try:
            await channel.send(event)
        except (frames.ChannelClosed, OSError, trio.ClosedResourceError) as exc:
            log.warning("could not tell the daemon about %s: %s", event["event"], exc)

    def report_damage(self, found: list[Damage], count: int) -> None:
        """`LapseGuard.report`: tell the daemon what was marked (trio thread)."""
        if self.nursery is None or self._stopping:
            return
        event: DamageEvent = {"event": "damage", "count": count,
                              "paths": [d.path or f"inode {d.ino}" for d in found[:DAMAGE_PATHS]],
                              "cause": found[0].cause if found else "",
                              "inos": [int(d.ino) for d in found[:DAMAGE_INOS]]}
        self.nursery.start_soon(self.tell_daemon, event)


def _noop(txn: Txn) -> None:
    return None


def _nothing() -> None:
    return None


# ---- the requests, checked (`ipc.messages` says what each holds) ----------


def _hold_request(frame: frames.Frame) -> HoldRequest:
    request: HoldRequest = {"op": "hold"}
    if "timeout" in frame:
        request["timeout"] = _number(frame, "timeout")
    return request


def _commit_request(frame: frames.Frame) -> CommitRequest:
    return {"op": "commit", "snapshot_id": _string(frame, "snapshot_id"), "set_id": _string(frame, "set_id"),
            "created": _string(frame, "created"), "release": frame.get("release", False) is True}


def _delete_request(frame: frames.Frame) -> DeleteRequest:
    return {"op": "delete", "seq": _integer(frame, "seq"), "force": frame.get("force", False) is True}


def _set_held_request(frame: frames.Frame) -> SetHeldRequest:
    held = frame.get("held")
    if held is not None and (not isinstance(held, str) or not held):
        raise frames.RequestError(f"held must be a UTC time or null, not {held!r}")
    return {"op": "set_held", "seq": _integer(frame, "seq"), "held": held}


def _set_max_request(frame: frames.Frame) -> SetMaxRequest:
    value = _integer(frame, "bytes")
    if value < 0:
        raise frames.RequestError("bytes must be >= 0 (0: no limit)")
    return {"op": "set_max", "bytes": value}


def _number(request: frames.Frame, key: str) -> float:
    value = request.get(key)
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
