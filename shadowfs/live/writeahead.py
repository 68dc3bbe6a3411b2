"""Capture ahead of a sequential overwriter, in the background, while it writes.

One job: make the first overwrite of a file after a snapshot cost about what
the copy of its old bytes costs, not a wait for every commit. Each open file
has a `WriteAhead`: a writer whose writes follow each other gets the blocks it
is about to overwrite captured ahead of it, in windows doubling up to
`CAPTURE_AHEAD_MAX`; once a window is durable the next one is handed to the
committer at once, without waiting, and up to `WINDOWS_IN_FLIGHT` windows
are queued, so copying the old bytes (and syncing them) runs beside the
writes instead of between them and the committer never waits for the writer.
A window's bytes are copied by the copier thread first, then referenced by a
committer job (`CaptureEngine.copy_ahead`, `for_write_copied`), so the copy
of one window runs beside the fdatasync and commit of the one before. Any other write captures
just what it touches and waits for that commit, as every change does.

Invariants:
- A write is applied only when the planner says its blocks need nothing: the
  capture cache learns of a window only after its commit (the window's
  `after` runs on the trio thread once the committer reports), so "pre-image
  durable before the change" holds whatever runs in the background.
- A write that needs blocks the running window will capture waits for that
  window (shielded, like every capture wait), then asks the planner again.
- At most `WINDOWS_IN_FLIGHT` windows per open file are in flight. A window taken for an older
  snapshot is not waited for; its job stores nothing once a newer snapshot
  exists (`CaptureEngine` decides inside the write transaction, and the
  planner plans again for the new snapshot).
- A window that fails is only logged: the write that needs those blocks
  captures them itself and gets the error.
- A capture names the file's opener as its caller (design §3.14): a WRITE
  request does not say who sent it; the caller of the OPEN does.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import trio

from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import CopiedRun
from shadowfs.capture.planner import CapturePlanner
from shadowfs.capture.provenance import Caller
from shadowfs.diffarea.schema import BackingIno, Seq
from shadowfs.live.commit import store

log = logging.getLogger(__name__)

CAPTURE_AHEAD_MIN = 1 << 20
CAPTURE_AHEAD_MAX = 16 << 20
WINDOWS_IN_FLIGHT = 3
# Copies the old bytes of windows into the block store outside the committer's transaction, so
# that copying one window runs beside the fdatasync and commit of the one before (one thread:
# copies are disk and memory bound; the mount process has one per volume anyway).
COPIER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowfs-copier")


@dataclass
class _Window:
    """A capture of [start, end) under snapshot `seq`, handed to the committer."""

    seq: Seq
    start: int
    end: int
    finished: trio.Event = field(default_factory=trio.Event)

    def overlaps(self, offset: int, length: int) -> bool:
        return offset < self.end and self.start < offset + length


class WriteAhead:
    """The write-ahead state of one open file."""

    def __init__(self, caller: Caller | None = None) -> None:
        self.caller = caller  # who opened the file: the author of the changes its writes make
        self.next_offset = -1  # where a sequential writer's next write would start
        self.ahead = 0  # bytes to keep captured beyond the current write
        self.frontier = 0  # where the captured region ahead of a sequential writer ends
        self.windows: list[_Window] = []  # in flight, oldest first

    def _advance(self, offset: int, length: int) -> bool:
        """Note a write of [offset, offset+length); whether it follows the previous one."""
        sequential = offset == self.next_offset
        self.next_offset = offset + length
        self.ahead = min(max(2 * self.ahead, CAPTURE_AHEAD_MIN), CAPTURE_AHEAD_MAX) if sequential else 0
        if not sequential:
            self.frontier = 0
        return sequential

    async def before_write(self, planner: CapturePlanner, committer: Committer, ino: BackingIno,
                           fd: int, offset: int, length: int) -> None:
        """Return when a write of [offset, offset+length) to `ino` may be applied."""
        seq = planner.newest
        if seq is None:
            return
        sequential = self._advance(offset, length)
        self.windows = [window for window in self.windows
                        if window.seq == seq and not window.finished.is_set()]
        for window in self.windows:
            if window.overlaps(offset, length):
                with trio.CancelScope(shield=True):
                    await window.finished.wait()
        capture = planner.write(seq, ino, fd, offset, length, self.ahead, self.caller)
        if capture is not None:
            await store(committer, capture)
            self.frontier = offset + length + self.ahead
        if sequential and self.frontier > offset:
            while self._next_window(planner, committer, seq, ino, fd, offset + length):
                pass

    def _next_window(self, planner: CapturePlanner, committer: Committer, seq: Seq,
                     ino: BackingIno, fd: int, write_end: int) -> bool:
        """Hand the committer the window after the frontier, unless enough are in flight or
        the frontier is far enough ahead of the writer; whether one was handed over."""
        in_flight = [window for window in self.windows if not window.finished.is_set()]
        if len(in_flight) >= WINDOWS_IN_FLIGHT or self.frontier - write_end >= WINDOWS_IN_FLIGHT * self.ahead:
            return False
        start, end = self.frontier, self.frontier + self.ahead
        self.frontier = end
        capture = planner.ahead(seq, ino, fd, start, end - start, self.caller)
        if capture is None:  # already captured, or beyond the file's size at `seq`
            return False
        window = _Window(seq, start, end)
        self.windows.append(window)
        token = trio.lowlevel.current_trio_token()

        def finish() -> None:
            capture.after()
            window.finished.set()

        def done(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.warning("capture ahead of a write failed (the write captures itself): %s", error)
            try:
                token.run_sync_soon(window.finished.set if error is not None else finish)
            except trio.RunFinishedError:  # the mount is ending: nobody waits for this window
                pass

        def copied(future: Future[CopiedRun]) -> None:
            error = future.exception()
            if error is not None:
                done(None, error)
                return
            try:
                committer.submit(capture.job(future.result()), done)
            except RuntimeError as exc:  # the committer stopped: the mount is ending
                done(None, exc)

        COPIER.submit(capture.copy).add_done_callback(copied)
        return True
