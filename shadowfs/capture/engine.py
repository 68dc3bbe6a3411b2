"""The capture engine: which pre-images a change needs, stored before it happens.

One job: the write rule of design §3.1 for every kind of change. Each
``for_*`` method runs inside a committer transaction (see committer.py), with
``seq`` the newest snapshot's sequence; it stores, for every object the change
will touch and that has no pre-image with sequence ``>= seq`` yet, the object's
current value read from the backing filesystem. Whether a change needs to ask
at all is the planner's question (planner.py); what the engine stores is the
answer of record, decided inside the write transaction.

Invariants:
- An object whose pre-image at ``seq`` is NONEXISTENT was born after snapshot
  ``seq``: nothing about it (attributes, blocks, entries if it is a directory)
  needs capturing until the next snapshot (design §3.5).
- Data blocks at or beyond the file's size at ``seq`` are never captured
  (appends are free); a truncation captures only the blocks it cuts.
- A run of consecutive blocks is captured as one ``copy_file_range`` into the
  block store (a clone where the filesystem shares extents); blocks that are
  holes in the live file, or lie past its end, are stored as zero blocks
  without bytes. The store is synced before the commit that references it.
- Capture ahead of a writer may copy first and commit after (`copy_ahead` on
  the copier thread, then `for_write_copied` in a committer transaction). A
  copied block is stored only if it still has no pre-image ``>= seq`` at
  commit: any change applied to it before the copy committed its own
  pre-image first, so a copy that is stored holds the value of `seq`; copies
  not stored are freed (punched out later).
- Attributes are captured before any block, because the size at ``seq`` comes
  from them.
- Who made a change (design §3.14): a method given an `Authorship` stores its
  record with each attribute or entry pre-image it stores, in the same
  transaction (`diffarea.provenance`); a pre-image that exists already keeps
  the author of the change that stored it. Block pre-images get none.
- Live values are read through ``open_by_ino`` on the backing root, never
  through the live mount.
- Objects are `BackingIno`s and snapshots `Seq`s; an inode number read from the
  backing filesystem (a live directory entry) is typed where it is read.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from shadowfs.capture.provenance import Authorship, Caller, CommandNames
from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, Txn
from shadowfs.diffarea.provenance import put_author
from shadowfs.diffarea.schema import (
    ABSENT,
    BLOCK_SIZE,
    NONEXISTENT,
    AttrRecord,
    BackingIno,
    BlockRef,
    DirentRecord,
    Seq,
    attr_from_stat,
    block_span,
    blocks_below,
)
from shadowfs.linux.syscalls import list_xattrs, open_by_ino


def read_live_attr(root_fd: int, ino: BackingIno) -> AttrRecord:
    """The object's current attributes, xattrs and symlink target on the backing fs."""
    fd = open_by_ino(root_fd, ino, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        target = os.fsencode(os.readlink("", dir_fd=fd)) if stat.S_ISLNK(st.st_mode) else b""
        return attr_from_stat(st, target, list_xattrs(fd))
    finally:
        os.close(fd)


@dataclass
class CopiedRun:
    """Blocks of one file copied into the block store ahead of their commit (`copy_ahead`)."""

    ino: BackingIno
    refs: dict[int, BlockRef] = field(default_factory=dict)  # block -> its bytes in the store
    holes: set[int] = field(default_factory=set)  # blocks that were holes: zero blocks


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as [first, stop) runs of consecutive blocks."""
    runs: list[tuple[int, int]] = []
    for block in blocks:
        if runs and runs[-1][1] == block:
            runs[-1] = (runs[-1][0], block + 1)
        else:
            runs.append((block, block + 1))
    return runs


def _data_blocks(fd: int, run: range, data_end: int) -> set[int]:
    """The blocks of `run` that hold data below `data_end` (the rest read as zeros: holes,
    or past the end of the live file), found with SEEK_DATA/SEEK_HOLE."""
    found: set[int] = set()
    position = run.start * BLOCK_SIZE
    stop = min(run.stop * BLOCK_SIZE, data_end)
    while position < stop:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from here to the end of the file
                break
            raise
        if start >= stop:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), stop)
        found.update(range(start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1))
        position = end
    return found


def read_live_dirent(dir_fd: int, name: bytes) -> DirentRecord:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return ABSENT
    return DirentRecord(BackingIno(st.st_ino), stat.S_IFMT(st.st_mode) >> 12)


class CaptureEngine:
    """The write rule of one volume, over its diff area and its backing root."""

    def __init__(self, area: DiffArea, root_fd: int) -> None:
        self.area = area
        self.root_fd = root_fd
        self.names = CommandNames()

    def author(self, caller: Caller | None, op: str) -> Authorship | None:
        """The author of a job's changes, made inside the job (nothing is read until a pre-image
        is stored); None when the caller is not known."""
        return None if caller is None else Authorship(self.names, caller, op)

    def _stored(self, txn: Txn, obj: bytes, seq: Seq, value: bytes, by: Authorship | None) -> None:
        """Store an attribute or entry pre-image that is not there yet, and who made the change."""
        if self.area.put_preimage(txn, obj, seq, value) and by is not None:
            put_author(self.area, txn, obj, seq, by.value())

    # ---- questions asked before a change (read transactions are enough) ----

    def write_needs_capture(self, txn: Txn, seq: Seq, ino: BackingIno, offset: int,
                            length: int) -> bool:
        """Whether a write of [offset, offset+length) would store any pre-image."""
        record = self.area.attr_at(txn, ino, seq)
        if record is None:
            return True
        if not record.exists:
            return False
        limit = blocks_below(record.size)
        return any(self.area.preimage(txn, schema.block_object(ino, block), seq) is None
                   for block in block_span(offset, length) if block < limit)

    # ---- captures (run inside the committer's write transaction) ----------

    def attrs(self, txn: Txn, seq: Seq, ino: BackingIno, by: Authorship | None = None) -> AttrRecord:
        """Capture the attributes of `ino` if needed (made by `by`); return their value at `seq`."""
        obj = schema.attr_object(ino)
        value = self.area.preimage(txn, obj, seq)
        if value is not None:
            return schema.decode_attr(value)
        record = read_live_attr(self.root_fd, ino)
        self._stored(txn, obj, seq, schema.encode_attr(record), by)
        return record

    def for_attr_change(self, txn: Txn, seq: Seq, ino: BackingIno, by: Authorship | None = None) -> None:
        """chmod, chown, utimens, xattr changes, and the ctime/nlink side of links."""
        self.attrs(txn, seq, ino, by)

    def for_write(self, txn: Txn, seq: Seq, ino: BackingIno, offset: int,
                  length: int, by: Authorship | None = None) -> None:
        record = self.attrs(txn, seq, ino, by)
        if record.exists:
            self._blocks(txn, seq, ino, record.size, block_span(offset, length))

    def for_truncate(self, txn: Txn, seq: Seq, ino: BackingIno, new_size: int,
                     by: Authorship | None = None) -> None:
        record = self.attrs(txn, seq, ino, by)
        if record.exists and new_size < record.size:
            self._blocks(txn, seq, ino, record.size,
                         range(new_size // BLOCK_SIZE, blocks_below(record.size)))

    def _blocks(self, txn: Txn, seq: Seq, ino: BackingIno, size_at_seq: int,
                blocks: range) -> None:
        wanted = [block for block in blocks if block < blocks_below(size_at_seq)
                  and self.area.preimage(txn, schema.block_object(ino, block), seq) is None]
        if not wanted:
            return
        fd = open_by_ino(self.root_fd, ino, os.O_RDONLY)
        try:
            live_size = os.fstat(fd).st_size
            for first, stop in _runs(wanted):
                self._run(txn, seq, ino, fd, range(first, stop), size_at_seq, live_size)
        finally:
            os.close(fd)

    def _run(self, txn: Txn, seq: Seq, ino: BackingIno, fd: int, run: range, size_at_seq: int,
             live_size: int) -> None:
        """Capture consecutive blocks: holes (and what lies past the live end) as zero blocks,
        each stretch of blocks holding data as one copy into the block store."""
        data = _data_blocks(fd, run, min(live_size, size_at_seq))
        for first, stop in _runs([block for block in run if block in data]):
            start = first * BLOCK_SIZE
            offset = self.area.blocks.copy_from(fd, start, min(stop * BLOCK_SIZE, size_at_seq) - start)
            for block in range(first, stop):
                keep = min(BLOCK_SIZE, size_at_seq - block * BLOCK_SIZE)
                self.area.put_block_ref(txn, ino, block, seq,
                                        BlockRef(offset + (block - first) * BLOCK_SIZE, keep))
        for block in run:
            if block not in data:
                keep = min(BLOCK_SIZE, size_at_seq - block * BLOCK_SIZE)
                self.area.put_block_ref(txn, ino, block, seq, BlockRef(None, keep))

    def copy_ahead(self, seq: Seq, ino: BackingIno, offset: int, length: int) -> CopiedRun:
        """Copy the blocks of [offset, offset+length) that have no pre-image yet into the block
        store, outside any write transaction (the copier thread); `for_write_copied` stores them."""
        copied = CopiedRun(ino)
        with self.area.read() as txn:
            record = self.area.attr_at(txn, ino, seq)
            if record is not None and not record.exists:
                return copied
            wanted = [block for block in block_span(offset, length)
                      if self.area.preimage(txn, schema.block_object(ino, block), seq) is None]
        if not wanted:
            return copied
        fd = open_by_ino(self.root_fd, ino, os.O_RDONLY)
        try:
            live_size = os.fstat(fd).st_size
            size = live_size if record is None else min(record.size, live_size)
            wanted = [block for block in wanted if block < blocks_below(size)]
            for first, stop in _runs(wanted):
                run = range(first, stop)
                data = _data_blocks(fd, run, size)
                copied.holes.update(block for block in run if block not in data)
                for start_block, stop_block in _runs([block for block in run if block in data]):
                    start = start_block * BLOCK_SIZE
                    where = self.area.blocks.copy_from(fd, start, min(stop_block * BLOCK_SIZE, size) - start)
                    for block in range(start_block, stop_block):
                        copied.refs[block] = BlockRef(where + (block - start_block) * BLOCK_SIZE,
                                                      min(BLOCK_SIZE, size - block * BLOCK_SIZE))
        finally:
            os.close(fd)
        return copied

    def for_write_copied(self, txn: Txn, seq: Seq, ino: BackingIno, offset: int, length: int,
                         copied: CopiedRun, by: Authorship | None = None) -> None:
        """`for_write`, storing what `copy_ahead` copied where it is still wanted; a block it did
        not copy (or copied shorter than the file was at `seq`) is captured here as usual."""
        record = self.attrs(txn, seq, ino, by)
        missing: list[int] = []
        store: dict[int, BlockRef] = {}
        if record.exists:
            limit = blocks_below(record.size)
            span = block_span(offset, length)
            captured = self.area.block_refs_range(txn, ino, span.start, min(span.stop, limit), seq)
            for block in span:
                ref = copied.refs.pop(block, None)
                if block >= limit or block in captured:
                    if ref is not None:
                        self.area.free_extent(txn, ref)
                    continue
                keep = min(BLOCK_SIZE, record.size - block * BLOCK_SIZE)
                if ref is not None and ref.length >= keep:
                    store[block] = BlockRef(ref.offset, keep)
                elif ref is None and block in copied.holes:
                    store[block] = BlockRef(None, keep)
                else:
                    if ref is not None:
                        self.area.free_extent(txn, ref)
                    missing.append(block)
        self.area.put_block_refs(txn, ino, seq, store)
        for ref in copied.refs.values():
            self.area.free_extent(txn, ref)
        copied.refs.clear()
        for first, stop in _runs(missing):
            self._blocks(txn, seq, ino, record.size, range(first, stop))

    def discard(self, txn: Txn, copied: CopiedRun) -> None:
        """What `copy_ahead` copied is not needed after all: free it."""
        for ref in copied.refs.values():
            self.area.free_extent(txn, ref)
        copied.refs.clear()

    def for_entry_change(self, txn: Txn, seq: Seq, dir_ino: BackingIno,
                         name: bytes, by: Authorship | None = None) -> DirentRecord | None:
        """An entry of `dir_ino` is created, removed or replaced: capture it and the dir.

        Returns the entry's value at `seq` (None when the directory is newer than `seq`).
        """
        dir_record = self.attrs(txn, seq, dir_ino, by)
        if not dir_record.exists:
            return None
        obj = schema.dirent_object(dir_ino, name)
        value = self.area.preimage(txn, obj, seq)
        if value is not None:
            return schema.decode_dirent(value)
        dir_fd = open_by_ino(self.root_fd, dir_ino, os.O_PATH | os.O_DIRECTORY)
        try:
            record = read_live_dirent(dir_fd, name)
        finally:
            os.close(dir_fd)
        self._stored(txn, obj, seq, schema.encode_dirent(record), by)
        return record

    def note_new_object(self, txn: Txn, seq: Seq, ino: BackingIno) -> None:
        """`ino` was just created: mark it as not existing at `seq`."""
        self.area.put_preimage(txn, schema.attr_object(ino), seq, schema.encode_attr(NONEXISTENT))

    def note_death(self, txn: Txn, seq: Seq, ino: BackingIno) -> None:
        """`ino` lost its last name and now lives in the graveyard."""
        self.area.graveyard_add(txn, ino, seq)
