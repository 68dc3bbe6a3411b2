"""The read model of one snapshot: what an object looked like at the instant.

One job: the read rule of design §3.2, with its read-validate step, for
attributes, directory entries, directory listings, symlinks, xattrs and data.
Every method first reads the live value from the backing filesystem and only
then opens an LMDB read transaction to look for a pre-image: a pre-image is
committed before the change it protects is applied, so a transaction begun
after the live read sees the pre-image of any change that read may have seen.
A pre-image, when there is one, always wins over the live value.

Invariants:
- Objects are reached by inode number (`open_by_ino`), never by path, so
  renames after the snapshot do not matter.
- ``<backing>/.shadowfs`` is hidden from the volume root, whose link count
  leaves it out too.
- A snapshot deleted while being read answers ESTALE instead of wrong data:
  every read ends with a transaction that checks the snapshot still exists,
  so captured bytes read before it cannot come from an extent that its
  deletion punched out (punching follows the deletion's commit).
- A `SnapshotView` and `LiveObjects` may be used from several threads at
  once: each call begins and ends its own LMDB read transaction (py-lmdb opens
  environments with MDB_NOTLS, so a transaction is not tied to its thread
  but must not be shared), and cached descriptors are borrowed, never closed
  while borrowed. Directory listings use a descriptor of their own (a
  directory's read position is per open file).
- Data reads assemble their result in place: live runs and captured extents
  are read with preadv straight into one buffer.
- An object marked damaged in this snapshot (design §9.3: it changed while
  protection had lapsed) answers EIO to every read: attributes, symlink
  target, xattrs, data, its listing if a directory, a lookup in it or of it.
  The mark is looked up in the transaction each read opens anyway (one get
  per object).
- Objects are `BackingIno`s, the snapshot a `Seq`. Inode numbers read from
  the backing filesystem (a live directory entry) are typed where they are
  read; reads take the caller's `BackingIno` as it is, with no conversion.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, Txn
from shadowfs.diffarea.schema import (
    BLOCK_SIZE,
    AttrRecord,
    BackingIno,
    BlockRef,
    DirentRecord,
    Seq,
    attr_from_stat,
    block_span,
)
from shadowfs.linux.fdcache import DescriptorCache
from shadowfs.linux.syscalls import data_regions, list_xattrs, open_by_ino

_GONE = (errno.ESTALE, errno.ENOENT, errno.ENOTDIR)
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class LiveObjects:
    """Descriptors of live backing objects of one volume, by inode and open flags.

    Safe to use from several threads at once: a descriptor is *borrowed* for the
    length of one use (`linux.fdcache`), so a thread never finds its descriptor
    closed, or its number reused for another file, in the middle of a call.
    A cached descriptor keeps its inode allocated, which is harmless: shadowfs
    only reaches inodes that a snapshot still needs.
    """

    def __init__(self, root_fd: int, capacity: int = 1024) -> None:
        self.root_fd = root_fd
        self.root_ino = BackingIno(os.fstat(root_fd).st_ino)
        self._cache: DescriptorCache[tuple[BackingIno, int]] = DescriptorCache(
            capacity, lambda key: open_by_ino(root_fd, key[0], key[1]))

    @contextmanager
    def borrow(self, ino: BackingIno, flags: int = _PATH_FLAGS) -> Iterator[int]:
        """A descriptor of inode `ino` opened with `flags`, open until the block ends."""
        with self._cache.borrow((ino, flags)) as fd:
            yield fd

    def open(self, ino: BackingIno, flags: int = _READ_FLAGS) -> int:
        """A new descriptor of `ino`, owned by the caller (not cached)."""
        return open_by_ino(self.root_fd, ino, flags)

    def close(self) -> None:
        """Close every descriptor; one still borrowed is closed when it is given back."""
        self._cache.close()


class SnapshotView:
    """One snapshot (sequence `seq`) of one volume."""

    def __init__(self, area: DiffArea, live: LiveObjects, seq: Seq) -> None:
        self.area = area
        self.live = live
        self.seq = seq
        self.root_ino = live.root_ino

    def _txn_checked(self, *objects: BackingIno) -> Txn:
        """A read transaction in which the snapshot exists (else ESTALE) and none of `objects` is
        damaged in it (else EIO)."""
        txn = self.area.env.begin()
        if not self.area.has_snapshot(txn, self.seq):
            txn.abort()
            raise OSError(errno.ESTALE, "snapshot was deleted")
        try:
            for ino in objects:
                self._check_damage(txn, ino)
        except BaseException:
            txn.abort()
            raise
        return txn

    def _check_damage(self, txn: Txn, ino: BackingIno) -> None:
        """EIO if `ino` is damaged in this snapshot (design §9.3): it changed while protection had
        lapsed, in ways no pre-image holds, so no part of it can be trusted here."""
        through = self.area.damaged_through(txn, ino)
        if through is not None and through >= self.seq:
            raise OSError(errno.EIO, f"inode {ino} is damaged in snapshot {self.seq} "
                          "(it changed while protection had lapsed)")

    # ---- attributes ------------------------------------------------------

    def _live_attr(self, ino: BackingIno, with_xattrs: bool, fd: int | None = None) -> AttrRecord | None:
        if fd is not None:  # the caller's own descriptor of a regular file
            return attr_from_stat(os.fstat(fd), b"", list_xattrs(fd) if with_xattrs else None)
        try:
            with self.live.borrow(ino) as fd:
                st = os.fstat(fd)
                target = b""
                if (st.st_mode & 0o170000) == 0o120000:
                    target = os.fsencode(os.readlink("", dir_fd=fd))
                return attr_from_stat(st, target, list_xattrs(fd) if with_xattrs else None)
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            raise

    def attr(self, ino: BackingIno, *, with_xattrs: bool = False, fd: int | None = None) -> AttrRecord:
        """The object's attributes at the snapshot; ENOENT if it did not exist then. `fd`: the
        caller's descriptor of the live object, if it has one (saves opening another)."""
        live = self._live_attr(ino, with_xattrs, fd)
        txn = self._txn_checked(ino)
        try:
            record = self.area.attr_at(txn, ino, self.seq)
        finally:
            txn.abort()
        if record is None:
            record = live
        if record is None or not record.exists:
            raise OSError(errno.ENOENT, f"inode {ino} not in snapshot")
        if ino == self.root_ino:
            # the hidden .shadowfs directory is a subdirectory on the backing fs only
            record = dataclasses.replace(record, nlink=record.nlink - 1)
        return record

    def readlink(self, ino: BackingIno) -> bytes:
        record = self.attr(ino)
        if not record.is_symlink:
            raise OSError(errno.EINVAL, "not a symlink")
        return record.symlink_target

    def xattrs(self, ino: BackingIno) -> dict[bytes, bytes]:
        return self.attr(ino, with_xattrs=True).xattrs

    # ---- directories -----------------------------------------------------

    def _hidden(self, dir_ino: BackingIno, name: bytes) -> bool:
        return dir_ino == self.root_ino and name == schema.HIDDEN_DIR

    def lookup(self, dir_ino: BackingIno, name: bytes) -> DirentRecord:
        """The entry `name` of directory `dir_ino` at the snapshot; ENOENT if none."""
        if self._hidden(dir_ino, name):
            raise OSError(errno.ENOENT, "no such entry")
        live: DirentRecord | None = None
        try:
            with self.live.borrow(dir_ino) as dir_fd:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            live = DirentRecord(BackingIno(st.st_ino), (st.st_mode & 0o170000) >> 12)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        txn = self._txn_checked(dir_ino)
        try:
            record = self.area.dirent_at(txn, dir_ino, name, self.seq)
            if record is None:
                record = live
            if record is None or not record.present:
                raise OSError(errno.ENOENT, "no such entry")
            self._check_damage(txn, record.ino)
        finally:
            txn.abort()
        return record

    def listdir(self, dir_ino: BackingIno) -> list[tuple[bytes, DirentRecord]]:
        """Every entry of `dir_ino` at the snapshot, sorted by name."""
        entries: dict[bytes, DirentRecord] = {}
        try:
            # a descriptor of its own: a directory's read position is shared by every user
            # of one descriptor, so two threads listing through a cached one would mix up
            dir_fd = self.live.open(dir_ino, _DIR_FLAGS)
            try:
                with os.scandir(dir_fd) as scan:
                    for entry in scan:
                        name = os.fsencode(entry.name)
                        entries[name] = DirentRecord(BackingIno(entry.inode()), 0)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        txn = self._txn_checked(dir_ino)
        try:
            overlay = self.area.dirent_overlay(txn, dir_ino, self.seq)
        finally:
            txn.abort()
        for name, record in overlay.items():
            if record.present:
                entries[name] = record
            else:
                entries.pop(name, None)
        if dir_ino == self.root_ino:
            entries.pop(schema.HIDDEN_DIR, None)
        return sorted(entries.items())

    def listdir_attrs(self, dir_ino: BackingIno, limit: int
                      ) -> list[tuple[bytes, BackingIno, AttrRecord | OSError]] | None:
        """Every entry of `dir_ino` at the snapshot with its attributes and xattrs at the
        snapshot (or the error its `attr` would raise: EIO when damaged), sorted by name; None
        when there are more than `limit` entries.

        Costs one listing, one openat per entry that is still under its name live, and one
        transaction for all: the live values are read first, so the transaction sees the
        pre-image of any change they may have seen (the read rule, as in `attr`).
        """
        entries = self.listdir(dir_ino)
        if len(entries) > limit:
            return None
        live: dict[bytes, AttrRecord] = {}
        try:
            with self.live.borrow(dir_ino) as dir_fd:
                for name, record in entries:
                    found = self._live_child(dir_fd, name, record.ino)
                    if found is not None:
                        live[name] = found
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        result: list[tuple[bytes, BackingIno, AttrRecord | OSError]] = []
        missing: list[int] = []
        txn = self._txn_checked(dir_ino)
        try:
            for name, record in entries:
                attrs: AttrRecord | OSError | None
                try:
                    self._check_damage(txn, record.ino)
                    attrs = self.area.attr_at(txn, record.ino, self.seq) or live.get(name)
                    if attrs is not None and not attrs.exists:
                        attrs = OSError(errno.ENOENT, f"inode {record.ino} not in snapshot")
                except OSError as exc:
                    attrs = exc
                if attrs is None:  # not under this name live any more: reached by inode below
                    missing.append(len(result))
                    attrs = OSError(errno.ENOENT, "not read yet")
                result.append((name, record.ino, attrs))
        finally:
            txn.abort()
        for position in missing:
            name, ino, _ = result[position]
            try:
                result[position] = (name, ino, self.attr(ino, with_xattrs=True))
            except OSError as exc:
                result[position] = (name, ino, exc)
        return result

    @staticmethod
    def _live_child(dir_fd: int, name: bytes, ino: BackingIno) -> AttrRecord | None:
        """The live attributes and xattrs of entry `name` of the directory `dir_fd` if it is
        still inode `ino`, else None."""
        try:
            fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in _GONE or exc.errno == errno.ELOOP:
                return None
            raise
        try:
            st = os.fstat(fd)
            if st.st_ino != ino:
                return None
            target = b""
            if (st.st_mode & 0o170000) == 0o120000:
                target = os.fsencode(os.readlink("", dir_fd=fd))
            return attr_from_stat(st, target, list_xattrs(fd))
        finally:
            os.close(fd)

    # ---- data ------------------------------------------------------------

    def read(self, ino: BackingIno, offset: int, size: int, file_size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file whose size at the snapshot is given."""
        return bytes(self.read_buffer(ino, offset, size, file_size))

    def read_buffer(self, ino: BackingIno, offset: int, size: int, file_size: int,
                    fd: int | None = None) -> bytes | bytearray:
        """`read`, but the result may be a bytearray (no copy); `fd` is the caller's descriptor
        of the live file open for reading (else one is borrowed from the cache)."""
        return self.read_hinted(ino, offset, size, file_size, fd)[0]

    def read_hinted(self, ino: BackingIno, offset: int, size: int, file_size: int, fd: int | None = None,
                    *, live_first: bool = False) -> tuple[bytes | bytearray, bool]:
        """`read_buffer`, and whether any block came from the diff area.

        `live_first` (for a file that had no captured block when last read): read
        everything live and look up only once, afterwards: by the read-validate
        argument one lookup after the live read is enough, so the common case costs
        one transaction. Captured blocks found then are read over the live bytes.
        Without it:

        Blocks with a pre-image come from the diff area and the live file is not
        read for them; the others are read live straight into the result. Then a
        new transaction checks that the snapshot still exists (so captured bytes
        read meanwhile were not punched out by its deletion: ESTALE instead) and
        looks the live blocks up once more (read-validate): a pre-image that
        appeared meanwhile wins, and the check repeats for the bytes it brought.
        """
        size = max(0, min(size, file_size - offset))
        if size == 0:
            self._txn_checked(ino).abort()
            return b"", False
        span = block_span(offset, size)
        refs = {} if live_first else self._block_refs(ino, span.start, span.stop)
        captured = bool(refs)
        live = [block for block in span if block not in refs]
        if not refs:  # the common case: one pread, no buffer to assemble
            result: bytes | bytearray = self._pread_live(ino, fd, offset, size)
        else:
            result = bytearray(size)
            self._read_live_runs(ino, fd, memoryview(result), offset, live)
            self.area.read_blocks_into(refs, memoryview(result), offset)
        while True:
            refs = self._block_refs(ino, span.start, span.stop, only=live)
            if not refs:
                return result, captured
            captured = True
            if not isinstance(result, bytearray):
                result = bytearray(result)
            out = memoryview(result)
            self._clear_blocks(out, offset, refs)
            self.area.read_blocks_into(refs, out, offset)
            live = [block for block in live if block not in refs]

    def data_regions(self, ino: BackingIno, size: int) -> list[tuple[int, int]]:
        """(offset, end) regions below `size` (the file's size at the snapshot) that may hold data
        at the snapshot: the live file's data regions, then, looked up afterwards (read-validate),
        every captured block. A block that was a hole at the snapshot and is one live is in
        neither; one whose data was punched out or cut off since was captured first."""
        regions: list[tuple[int, int]] = []
        try:
            with self.live.borrow(ino, _READ_FLAGS) as fd:
                regions = data_regions(fd, size)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        captured = self._block_refs(ino, 0, (size + BLOCK_SIZE - 1) // BLOCK_SIZE)
        for first, last in _runs(sorted(captured)) if captured else ():
            regions.append((first * BLOCK_SIZE, min(size, (last + 1) * BLOCK_SIZE)))
        regions.sort()
        merged: list[tuple[int, int]] = []
        for start, end in regions:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _block_refs(self, ino: BackingIno, start: int, stop: int,
                    only: list[int] | None = None) -> dict[int, BlockRef]:
        """Where the captured blocks among [start, stop) (or among `only`) of `ino` are, in a
        transaction that first checks that the snapshot exists."""
        if only is not None and not only:
            start = stop  # nothing to look up, but the snapshot check still runs
        txn = self._txn_checked(ino)
        try:
            if start >= stop or not self.area.blocks_captured(txn, ino, self.seq):
                return {}  # the common case: no block of this file was ever captured
            refs = self.area.block_refs_range(txn, ino, start, stop, self.seq)
        finally:
            txn.abort()
        if only is not None:
            wanted = set(only)
            refs = {block: ref for block, ref in refs.items() if block in wanted}
        return refs

    def _pread_live(self, ino: BackingIno, fd: int | None, offset: int, size: int) -> bytes:
        """Live bytes [offset, offset+size); zeros past the live file's end or if it is gone."""
        data = b""
        try:
            if fd is not None:
                data = os.pread(fd, size, offset)
            else:
                with self.live.borrow(ino, _READ_FLAGS) as own:
                    data = os.pread(own, size, offset)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        if len(data) < size:  # the live file is shorter: zeros, or captured (validated later)
            data += bytes(size - len(data))
        return data

    def _read_live_runs(self, ino: BackingIno, fd: int | None, out: memoryview, offset: int,
                        blocks: list[int]) -> None:
        """Read the live bytes of `blocks` (ascending) into `out`, which holds the file from
        `offset`; one preadv per run of adjacent blocks. Bytes past the live end stay zero."""
        if not blocks:
            return
        if fd is None:
            with self.live.borrow(ino, _READ_FLAGS) as own:
                self._read_live_runs(ino, own, out, offset, blocks)
            return
        end = offset + len(out)
        for first, last in _runs(blocks):
            low, high = max(offset, first * BLOCK_SIZE), min(end, (last + 1) * BLOCK_SIZE)
            try:
                _preadv_full(fd, out[low - offset:high - offset], low)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise

    @staticmethod
    def _clear_blocks(out: memoryview, offset: int, blocks: dict[int, BlockRef]) -> None:
        """Zero the bytes of `blocks` in `out` (live bytes read before a pre-image was found)."""
        end = offset + len(out)
        for block in blocks:
            low, high = max(offset, block * BLOCK_SIZE), min(end, (block + 1) * BLOCK_SIZE)
            out[low - offset:high - offset] = bytes(high - low)


def _runs(blocks: list[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive numbers in an ascending list."""
    first = last = blocks[0]
    for block in blocks[1:]:
        if block != last + 1:
            yield first, last
            first = block
        last = block
    yield first, last


def _preadv_full(fd: int, out: memoryview, offset: int) -> None:
    """Fill `out` from `offset`; stops early (rest untouched) at the end of the file."""
    done = 0
    while done < len(out):
        count = os.preadv(fd, [out[done:]], offset + done)
        if count == 0:
            return
        done += count
