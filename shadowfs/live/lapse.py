"""Changes that bypassed capture: found and marked, so no snapshot ever shows them (design §9.3).

One job: for one volume, mark in the diff area every object that changed
without passing the live mount, so that reading it in an earlier snapshot
fails with EIO instead of returning later data. Two ways in:

- `catch_up`, before the mount accepts writes: after a lapse (the volume was
  unprotected from `ProtectionRecord.lapse_start` until now) a metadata scan
  of the backing tree (`linux.ctimescan`) finds every object whose ctime is
  after the lapse began, directories included.
- `watch`, while the volume is protected: a fanotify watcher on the backing
  filesystem (`linux.fanotify`) reports changes by any process but the mount
  process itself (and a predecessor it took over from): a process holding a
  descriptor from before the mount, another path to the same directory.

Invariants:
- The watcher is opened before the catch-up scan begins, so a change is seen
  by one or the other (or both); nothing falls between them.
- The heartbeat of the protection record is written only after every change
  the watcher reported before it was read has been marked.
- A watcher that overflowed falls back to a scan from the last heartbeat.
- Objects under ``<backing>/.shadowfs`` are the mount's own and never marked.
- Each marking is logged (one line per object, up to `LOG_EACH` a batch, then
  a count) and reported to the daemon through `report`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from shadowfs.capture.committer import Committer
from shadowfs.diffarea.area import DiffArea, Txn
from shadowfs.diffarea.schema import HIDDEN_DIR, BackingIno
from shadowfs.linux import ctimescan
from shadowfs.linux.fanotify import ChangeWatch, WatchOverflow
from shadowfs.live.commit import commit
from shadowfs.live.protection import HEARTBEAT, ProtectionRecord
from shadowfs.statedir import utc_now

log = logging.getLogger(__name__)

LOG_EACH = 20
COALESCE = 0.05  # let a burst of events merge in the kernel's queue before reading it
MARK_BATCH = 10_000


@dataclass(frozen=True)
class Damage:
    """One object found changed outside the live mount."""

    ino: BackingIno
    path: str | None
    cause: str


Report = Callable[[list[Damage], int], None]


class LapseGuard:
    """Finds and marks what bypassed the live mount of one volume (see the module docstring)."""

    def __init__(self, volume: str, area: DiffArea, committer: Committer, root_fd: int, backing: str,
                 watch: ChangeWatch | None, record: ProtectionRecord) -> None:
        self.volume = volume
        self.area = area
        self.committer = committer
        self.root_fd = root_fd
        self.backing = backing
        self.watch = watch
        self.record = record
        self.ignore_pids = {os.getpid()}
        self.report: Report | None = None
        self.marked = 0
        self._last_heartbeat = 0.0

    # ---- before the mount (blocking) -------------------------------------

    def catch_up(self, since: float | None) -> int:
        """Mark every object changed after `since` (None: never protected, nothing to do)."""
        if since is None or not self._has_snapshots():
            return 0
        started = time.monotonic()
        found = [Damage(BackingIno(c.ino), _text(c.path),
                        f"changed while the volume was unprotected (since {_utc(since)})")
                 for c in ctimescan.changed_since(self.root_fd, int(since * 1e9), skip=HIDDEN_DIR)]
        count = 0
        for start in range(0, len(found), MARK_BATCH):
            batch = found[start:start + MARK_BATCH]
            count += self.committer.run(functools.partial(self._mark, found=batch))
        log.info("volume %s: looked for changes since %s in %.2f s: %d objects marked damaged",
                 self.volume, _utc(since), time.monotonic() - started, count)
        self._logged(found)
        return count

    def _has_snapshots(self) -> bool:
        with self.area.read() as txn:
            return self.area.newest_seq(txn) is not None

    def _mark(self, txn: Txn, found: Iterable[Damage]) -> int:
        found_at = utc_now()
        count = 0
        for damage in found:
            if self.area.mark_damaged(txn, damage.ino, damage.path, damage.cause, found_at):
                count += 1
        return count

    # ---- while protected (trio) ------------------------------------------

    async def watch_changes(self) -> None:
        """Mark what the watcher reports, and keep the heartbeat, until cancelled."""
        while True:
            with trio.move_on_after(HEARTBEAT):
                if self.watch is None:
                    await trio.sleep_forever()
                await trio.lowlevel.wait_readable(self.watch.fileno())
                await trio.sleep(COALESCE)
            await self.handle_pending()

    async def handle_pending(self) -> None:
        """Mark every change queued now; then write the heartbeat if it is due."""
        read_at = time.time()
        try:
            found = self._read()
        except (WatchOverflow, OSError) as exc:
            # events lost, or a batch that could not be read to its end: either way the scan finds
            # what they would have marked (the mount must not die of a watcher error)
            since = self.record.lapse_start()
            log.warning("volume %s: the change watcher %s; scanning for changes since %s", self.volume,
                        "lost events" if isinstance(exc, WatchOverflow) else f"failed ({exc})",
                        _utc(since) if since is not None else "the start")
            await trio.to_thread.run_sync(self.catch_up, since)
            found = []
        if found:
            count = await commit(self.committer, lambda txn: self._mark(txn, found))
            self.marked += count
            self._logged(found)
            if self.report is not None:
                self.report(found, count)
        if read_at - self._last_heartbeat >= HEARTBEAT:
            self.record.heartbeat(read_at)
            self._last_heartbeat = read_at

    def _read(self) -> list[Damage]:
        found: list[Damage] = []
        if self.watch is None:
            return found
        for change in self.watch.read(self.ignore_pids):
            if change.ino == 0:  # its name was gone before we read the event: its directory tells
                if change.dir_ino is not None:
                    found.append(Damage(BackingIno(change.dir_ino), None, "an entry changed outside the "
                                        f"live mount by pid {change.pid} ({_command(change.pid)})"))
                continue
            path = _text(change.path)
            if path is not None and (path == HIDDEN_DIR.decode() or
                                     path.startswith(HIDDEN_DIR.decode() + "/")):
                continue
            cause = f"changed outside the live mount by pid {change.pid} ({_command(change.pid)})"
            found.append(Damage(BackingIno(change.ino), path, cause))
            if change.dir_ino is not None and change.dir_ino != change.ino:
                parent = os.path.dirname(path) if path is not None else None
                found.append(Damage(BackingIno(change.dir_ino), parent, cause))
        return found

    def end(self) -> None:
        """Protection ends now (a clean stop): record the instant up to which changes were seen."""
        self.record.end(time.time())

    def _logged(self, found: list[Damage]) -> None:
        for damage in found[:LOG_EACH]:
            log.warning("volume %s: %s (inode %d) %s: it reads as damaged (EIO) in earlier snapshots",
                        self.volume, damage.path if damage.path is not None else "an object",
                        damage.ino, damage.cause)
        if len(found) > LOG_EACH:
            log.warning("volume %s: ... and %d more objects", self.volume, len(found) - LOG_EACH)


def _text(path: bytes | None) -> str | None:
    if path is None:
        return None
    return os.fsdecode(path) if path else "."


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "exited"
