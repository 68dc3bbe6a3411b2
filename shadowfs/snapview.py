"""The read model of one snapshot: what an object looked like at the instant.

One job: DESIGN section 3's read rule, with its read-validate step, for
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
- A snapshot deleted while being read answers ESTALE instead of wrong data.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections import OrderedDict

import lmdb

from shadowfs import format as fmt
from shadowfs.capture import attr_from_stat, block_span
from shadowfs.diffarea import DiffArea
from shadowfs.format import BLOCK_SIZE, AttrRecord, DirentRecord
from shadowfs.osutil import list_xattrs, open_by_ino


class LiveObjects:
    """Descriptors of live backing objects of one volume, by inode, least recently used out.

    A cached descriptor keeps its inode allocated, which is harmless: shadowfs
    only reaches inodes that a snapshot still needs.
    """

    def __init__(self, root_fd: int, capacity: int = 1024) -> None:
        self.root_fd = root_fd
        self.root_ino = os.fstat(root_fd).st_ino
        self._capacity = capacity
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()

    def fd(self, ino: int, flags: int = os.O_PATH | os.O_NOFOLLOW) -> int:
        key = (ino, flags)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        fd = open_by_ino(self.root_fd, ino, flags)
        self._fds[key] = fd
        if len(self._fds) > self._capacity:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


_GONE = (errno.ESTALE, errno.ENOENT, errno.ENOTDIR)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class SnapshotView:
    """One snapshot (sequence `seq`) of one volume."""

    def __init__(self, area: DiffArea, live: LiveObjects, seq: int) -> None:
        self.area = area
        self.live = live
        self.seq = seq
        self.root_ino = live.root_ino

    def _txn_checked(self) -> lmdb.Transaction:
        txn = self.area.env.begin()
        if not self.area.has_snapshot(txn, self.seq):
            txn.abort()
            raise OSError(errno.ESTALE, "snapshot was deleted")
        return txn

    # ---- attributes ------------------------------------------------------

    def _live_attr(self, ino: int, with_xattrs: bool) -> AttrRecord | None:
        try:
            fd = self.live.fd(ino)
            st = os.fstat(fd)
            target = b""
            if (st.st_mode & 0o170000) == 0o120000:
                target = os.fsencode(os.readlink("", dir_fd=fd))
            return attr_from_stat(st, target, list_xattrs(fd) if with_xattrs else None)
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            raise

    def attr(self, ino: int, *, with_xattrs: bool = False) -> AttrRecord:
        """The object's attributes at the snapshot; ENOENT if it did not exist then."""
        live = self._live_attr(ino, with_xattrs)
        txn = self._txn_checked()
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

    def readlink(self, ino: int) -> bytes:
        record = self.attr(ino)
        if not record.is_symlink:
            raise OSError(errno.EINVAL, "not a symlink")
        return record.symlink_target

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.attr(ino, with_xattrs=True).xattrs

    # ---- directories -----------------------------------------------------

    def _hidden(self, dir_ino: int, name: bytes) -> bool:
        return dir_ino == self.root_ino and name == fmt.HIDDEN_DIR

    def lookup(self, dir_ino: int, name: bytes) -> DirentRecord:
        """The entry `name` of directory `dir_ino` at the snapshot; ENOENT if none."""
        if self._hidden(dir_ino, name):
            raise OSError(errno.ENOENT, "no such entry")
        live: DirentRecord | None = None
        try:
            st = os.stat(name, dir_fd=self.live.fd(dir_ino), follow_symlinks=False)
            live = DirentRecord(st.st_ino, (st.st_mode & 0o170000) >> 12)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        txn = self._txn_checked()
        try:
            record = self.area.dirent_at(txn, dir_ino, name, self.seq)
        finally:
            txn.abort()
        if record is None:
            record = live
        if record is None or not record.present:
            raise OSError(errno.ENOENT, "no such entry")
        return record

    def listdir(self, dir_ino: int) -> list[tuple[bytes, DirentRecord]]:
        """Every entry of `dir_ino` at the snapshot, sorted by name."""
        entries: dict[bytes, DirentRecord] = {}
        try:
            with os.scandir(self.live.fd(dir_ino, _DIR_FLAGS)) as scan:
                for entry in scan:
                    name = os.fsencode(entry.name)
                    entries[name] = DirentRecord(entry.inode(), 0)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        txn = self._txn_checked()
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
            entries.pop(fmt.HIDDEN_DIR, None)
        return sorted(entries.items())

    # ---- data ------------------------------------------------------------

    def read(self, ino: int, offset: int, size: int, file_size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file whose size at the snapshot is given.

        Blocks with a pre-image come from the diff area and the live file is not
        read for them; the others are read live and then looked up once more in a
        new transaction (read-validate): a pre-image that appeared meanwhile wins.
        """
        size = max(0, min(size, file_size - offset))
        if size == 0:
            return b""
        span = block_span(offset, size)
        images = self._block_images(ino, span)
        missing = [block for block in span if block not in images]
        live = b""
        live_start = offset
        if missing:
            live_start = max(offset, missing[0] * BLOCK_SIZE)
            live_end = min(offset + size, (missing[-1] + 1) * BLOCK_SIZE)
            try:
                live = os.pread(self.live.fd(ino, _READ_FLAGS), live_end - live_start, live_start)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
            if len(live) < live_end - live_start:  # the live file is shorter: zeros, or captured
                live += bytes(live_end - live_start - len(live))
            images.update(self._block_images(ino, missing))
        if not images:
            return live
        buffer = bytearray(size)
        for block in span:
            start = block * BLOCK_SIZE
            low, high = max(start, offset), min(start + BLOCK_SIZE, offset + size)
            image = images.get(block)
            if image is None:
                buffer[low - offset:high - offset] = live[low - live_start:high - live_start]
            else:
                piece = image[low - start:high - start]
                buffer[low - offset:low - offset + len(piece)] = piece  # past its end: zeros
        return bytes(buffer)

    def _block_images(self, ino: int, blocks: list[int] | range) -> dict[int, bytes]:
        txn = self._txn_checked()
        try:
            if not self.area.blocks_captured(txn, ino, self.seq):
                return {}  # the common case: no block of this file was ever captured
            refs = self.area.block_refs(txn, ino, blocks, self.seq)
        finally:
            txn.abort()
        return self.area.read_blocks(refs) if refs else {}
