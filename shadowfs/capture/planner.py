"""The capture planner: does this change need a pre-image, and which?

One job: answer, before a change is applied, what the write rule of design
§3.1 asks for it, cheaply. Most changes need nothing (an object born after
the newest snapshot, a block already captured, an append), and the planner
knows that from a cache or from one LMDB read transaction; only a change that
needs a pre-image gets a `Capture`: a job for the committer (which stores it
through `engine.CaptureEngine`, deciding again inside its write transaction)
and what to remember once it is durable. The caller (the live mount, or a test
driving the same code) runs the capture, waits for its commit, and only then
applies the change.

Invariants:
- Nothing here writes to the diff area or the backing directory; `note_new`
  only hands a fire-and-forget job to the committer. No pyfuse3, no trio.
- `CaptureCache` holds only facts that stay true while `newest` is the newest
  snapshot (pre-images at `newest` are written once and never change);
  `set_newest` drops it whenever the newest snapshot changes.
- A namespace plan (`removal`, `rename`) stats its names when it is made: if it
  carries a capture, the caller runs it and asks for a new plan, so that the
  pre-images always belong to the objects the change will touch (a name can
  name another object after an await); a plan without a capture is applied
  with no await in between.
- An object with no name left (open, unlinked) is invisible to every
  snapshot, so its changes need no capture (`seq_for`).
- Objects are `BackingIno`s and snapshots `Seq`s; the inode of a name a plan
  stats (`os.stat_result.st_ino`) is typed there, once. The cache and the write
  plan take them as they are: no conversion on the write path.
- Every plan takes the change's `Caller` (design §3.14) and only passes it
  into the job of a capture it returns; the job makes the author there. A plan
  that needs no capture does nothing with it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from shadowfs.capture.committer import Committer, Job
from shadowfs.capture.engine import CaptureEngine, CopiedRun
from shadowfs.capture.provenance import Caller
from shadowfs.diffarea.area import DiffArea, Txn
from shadowfs.diffarea.schema import AttrRecord, BackingIno, Seq, block_span, blocks_below

CACHE_LIMIT = 1 << 17  # (ino, block) pairs remembered as captured before the cache is dropped


@dataclass(frozen=True)
class Capture:
    """Pre-images a change needs: `job` runs in a committer transaction, `after` once it is durable."""

    job: Job
    after: Callable[[], None] | None = None


@dataclass(frozen=True)
class AheadCapture:
    """A capture ahead of a writer: `copy` runs on the copier thread, then `job(copied)` in a
    committer transaction, then `after` once that is durable."""

    copy: Callable[[], CopiedRun]
    job: Callable[[CopiedRun], Job]
    after: Callable[[], None]


@dataclass(frozen=True)
class RemovalPlan:
    """Removing the name of one object: what it names, whether a snapshot still sees the object."""

    seq: Seq | None  # the newest snapshot (None: there is none, nothing to keep)
    st: os.stat_result
    born: bool  # born after `seq`: no snapshot sees it
    capture: Capture | None  # run it, then plan again


@dataclass(frozen=True)
class RenamePlan:
    """A rename: the moved object, the object it replaces (if any), which were born after `seq`."""

    seq: Seq | None
    moved: os.stat_result
    target: os.stat_result | None
    born: dict[BackingIno, bool]
    capture: Capture | None


class CaptureCache:
    """What is known to need no capture under snapshot `seq`: born objects, captured blocks,
    and per file the number of blocks that held data at `seq` (blocks from there on, appends
    included, never need a pre-image), so that a write it covers asks the diff area nothing.
    """

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self.seq: Seq | None = None
        self.born: set[BackingIno] = set()
        self.blocks: dict[BackingIno, set[int]] = {}
        self.data_blocks: dict[BackingIno, int] = {}
        self._count = 0

    def reset(self, seq: Seq | None) -> None:
        self.seq = seq
        self.born.clear()
        self.blocks.clear()
        self.data_blocks.clear()
        self._count = 0

    def is_born(self, seq: Seq, ino: BackingIno) -> bool:
        """Whether `ino` is known to be born after snapshot `seq` (False: unknown)."""
        return seq == self.seq and ino in self.born

    def covers(self, seq: Seq, ino: BackingIno, blocks: range) -> bool:
        if seq != self.seq:
            return False
        if ino in self.born:
            return True
        limit = self.data_blocks.get(ino)
        if limit is not None and blocks.start >= limit:
            return True
        known = self.blocks.get(ino)
        return known is not None and all(block in known for block in blocks
                                         if limit is None or block < limit)

    def add_data_blocks(self, seq: Seq, ino: BackingIno, count: int) -> None:
        """`ino` held data in its first `count` blocks at `seq` (from its attribute pre-image)."""
        if seq == self.seq:
            self._grow(1)
            self.data_blocks[ino] = count

    def add_born(self, seq: Seq, ino: BackingIno) -> None:
        if seq == self.seq:
            self._grow(1)
            self.born.add(ino)

    def add_blocks(self, seq: Seq, ino: BackingIno, blocks: range) -> None:
        if seq == self.seq:
            self._grow(len(blocks))
            self.blocks.setdefault(ino, set()).update(blocks)

    def _grow(self, count: int) -> None:
        self._count += count
        if self._count > self.limit:
            self.reset(self.seq)
            self._count = count


class CapturePlanner:
    """The capture questions of one volume, answered against its diff area."""

    def __init__(self, area: DiffArea, engine: CaptureEngine, committer: Committer,
                 newest: Seq | None = None) -> None:
        self.area = area
        self.engine = engine
        self.committer = committer
        self.cache = CaptureCache()
        self.newest: Seq | None = None
        self.set_newest(newest)

    def set_newest(self, seq: Seq | None) -> None:
        """The newest snapshot changed (commit or delete): capture against `seq` from now on."""
        if seq != self.newest or seq != self.cache.seq:
            self.newest = seq
            self.cache.reset(seq)

    def seq_for(self, fd: int) -> Seq | None:
        """`newest`, or None when the object behind `fd` has no name left (invisible to snapshots)."""
        if self.newest is None or os.fstat(fd).st_nlink == 0:
            return None
        return self.newest

    # ---- plans ------------------------------------------------------------------------------

    def objects(self, seq: Seq | None, attrs: Sequence[BackingIno] = (),
                entries: Sequence[tuple[BackingIno, bytes]] = (), caller: Caller | None = None,
                op: str = "") -> Capture | None:
        """The capture of the attributes of `attrs` and the entries `entries` under `seq`, if needed
        (request `op` of `caller`)."""
        if seq is None or self._status(seq, attrs, entries)[0]:
            return None
        return Capture(self._objects_job(seq, attrs, entries, caller, op))

    def write(self, seq: Seq | None, ino: BackingIno, fd: int, offset: int, length: int,
              ahead: int = 0, caller: Caller | None = None) -> Capture | None:
        """The capture a write of [offset, offset+length) to `ino` (open as `fd`) needs, if any;
        a needed capture covers `ahead` more bytes."""
        if seq is None or not self._write_needs_capture(seq, ino, fd, offset, length):
            return None
        span = length + ahead
        return Capture(lambda txn: self.engine.for_write(txn, seq, ino, offset, span,
                                                         self.engine.author(caller, "write")),
                       lambda: self.cache.add_blocks(seq, ino, block_span(offset, span)))

    def ahead(self, seq: Seq, ino: BackingIno, fd: int, offset: int, length: int,
              caller: Caller | None = None) -> AheadCapture | None:
        """The capture of [offset, offset+length) ahead of a writer, if any is needed: copied by
        the copier thread first, then stored by a committer job (which stores nothing once a
        snapshot newer than `seq` exists: the writer plans again for that one)."""
        if not self._write_needs_capture(seq, ino, fd, offset, length):
            return None

        def job(copied: CopiedRun) -> Job:
            def store(txn: Txn) -> None:
                newest = self.area.newest_seq(txn)
                if newest is not None and newest > seq:
                    self.engine.discard(txn, copied)
                else:
                    self.engine.for_write_copied(txn, seq, ino, offset, length, copied,
                                                 self.engine.author(caller, "write"))
            return store

        return AheadCapture(lambda: self.engine.copy_ahead(seq, ino, offset, length), job,
                            lambda: self.cache.add_blocks(seq, ino, block_span(offset, length)))

    def truncate(self, seq: Seq | None, ino: BackingIno, size: int,
                 caller: Caller | None = None) -> Capture | None:
        """The capture cutting `ino` to `size` bytes needs, if any."""
        if seq is None or self.cache.is_born(seq, ino):
            return None
        with self.area.read() as txn:
            record = self.area.attr_at(txn, ino, seq)
            if record is not None and (not record.exists or size >= record.size or not
                                       self.engine.write_needs_capture(txn, seq, ino, size,
                                                                       record.size - size)):
                return None
        return Capture(lambda txn: self.engine.for_truncate(txn, seq, ino, size,
                                                            self.engine.author(caller, "truncate")))

    def removal(self, parent: BackingIno, parent_fd: int, name: bytes, *, directory: bool,
                caller: Caller | None = None) -> RemovalPlan:
        """Removing `name` from directory `parent`: the entry and the object it names."""
        seq = self.newest
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) != directory:
            code = errno.ENOTDIR if directory else errno.EISDIR
            raise OSError(code, os.strerror(code))
        if seq is None:
            return RemovalPlan(None, st, False, None)
        ino = BackingIno(st.st_ino)
        done, born = self._status(seq, [ino], [(parent, name)])
        if done:
            return RemovalPlan(seq, st, born[ino], None)
        job = self._objects_job(seq, [ino], [(parent, name)], caller, "rmdir" if directory else "unlink")
        return RemovalPlan(seq, st, False, Capture(job))

    def rename(self, old_parent: BackingIno, old_fd: int, old_name: bytes, new_parent: BackingIno,
               new_fd: int, new_name: bytes, caller: Caller | None = None) -> RenamePlan:
        """Moving `old_name` over `new_name`: both entries, the moved object and the one replaced."""
        seq = self.newest
        moved = os.stat(old_name, dir_fd=old_fd, follow_symlinks=False)
        target = _lstat_or_none(new_fd, new_name)
        if seq is None:
            return RenamePlan(None, moved, target, {}, None)
        inos = [BackingIno(moved.st_ino)] + ([BackingIno(target.st_ino)] if target is not None else [])
        entries = [(old_parent, old_name), (new_parent, new_name)]
        done, born = self._status(seq, inos, entries)
        capture = None if done else Capture(self._objects_job(seq, inos, entries, caller, "rename"))
        return RenamePlan(seq, moved, target, born, capture)

    def note_new(self, seq: Seq | None, ino: BackingIno) -> None:
        """`ino` was just created: no snapshot up to `seq` can see it (recorded in the background)."""
        if seq is not None:
            self.cache.add_born(seq, ino)
            self.committer.submit(lambda txn: self.engine.note_new_object(txn, seq, ino))

    # ---- what is stored already ------------------------------------------------------------

    def _status(self, seq: Seq, attrs: Iterable[BackingIno],
                entries: Iterable[tuple[BackingIno, bytes]]) -> tuple[bool, dict[BackingIno, bool]]:
        """(every listed object has its pre-image at >= seq, born-after-seq flag of each attrs ino).

        Objects known to be born after `seq` (the capture cache) need nothing and no lookup:
        creating and removing names in a directory made since the newest snapshot costs
        no diff-area transaction at all.
        """
        attrs = list(attrs)
        entries = list(entries)
        if all(self.cache.is_born(seq, ino) for ino in attrs) and all(
                self.cache.is_born(seq, dir_ino) for dir_ino, _name in entries):
            return True, dict.fromkeys(attrs, True)
        done = True
        born: dict[BackingIno, bool] = {}
        with self.area.read() as txn:
            for ino in attrs:
                record = self._attr_record(txn, seq, ino)
                if record is None:
                    done = False
                born[ino] = record is not None and not record.exists
            for dir_ino, name in entries:
                record = self._attr_record(txn, seq, dir_ino)
                if record is None or (record.exists
                                      and self.area.dirent_at(txn, dir_ino, name, seq) is None):
                    done = False
        return done, born

    def _attr_record(self, txn: Txn, seq: Seq, ino: BackingIno) -> AttrRecord | None:
        """The attribute pre-image of `ino` at >= seq; one saying "born after seq" is remembered."""
        record = self.area.attr_at(txn, ino, seq)
        if record is not None and not record.exists:
            self.cache.add_born(seq, ino)
        return record

    def _objects_job(self, seq: Seq, attrs: Sequence[BackingIno], entries: Sequence[tuple[BackingIno, bytes]],
                     caller: Caller | None = None, op: str = "") -> Job:
        def job(txn: Txn) -> None:
            by = self.engine.author(caller, op)
            for dir_ino, name in entries:
                self.engine.for_entry_change(txn, seq, dir_ino, name, by)
            for ino in attrs:
                self.engine.for_attr_change(txn, seq, ino, by)
        return job

    def _write_needs_capture(self, seq: Seq, ino: BackingIno, fd: int, offset: int, length: int) -> bool:
        blocks = block_span(offset, length)
        if self.cache.covers(seq, ino, blocks):
            return False
        with self.area.read() as txn:
            record = self._attr_record(txn, seq, ino)  # remembers a born file
            if record is not None:
                if not record.exists:
                    return False
                self.cache.add_data_blocks(seq, ino, blocks_below(record.size))
            needed = self.engine.write_needs_capture(txn, seq, ino, offset, length)
        if not needed:
            self.cache.add_blocks(seq, ino, blocks)
            return False
        return self.seq_for(fd) is not None


def _lstat_or_none(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
