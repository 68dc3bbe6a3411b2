"""The capture engine: which pre-images a change needs, stored before it happens.

One job: DESIGN section 3's write rule for every kind of change. Each
``for_*`` method runs inside a committer transaction (see committer.py), with
``n`` the newest snapshot's sequence; it stores, for every object the change
will touch and that has no pre-image with sequence ``>= n`` yet, the object's
current value read from the backing filesystem.

Invariants:
- An object whose pre-image at ``n`` is NONEXISTENT was born after snapshot
  ``n``: nothing about it (attributes, blocks, entries if it is a directory)
  needs capturing until the next snapshot.
- Data blocks at or beyond the file's size at ``n`` are never captured
  (appends are free); a truncation captures only the blocks it cuts.
- Attributes are captured before any block, because the size at ``n`` comes
  from them.
- Live values are read through ``open_by_ino`` on the backing root, never
  through the live mount.
"""

from __future__ import annotations

import errno
import os
import stat

import lmdb

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import ABSENT, BLOCK_SIZE, NONEXISTENT, AttrRecord, DirentRecord
from shadowfs.linux.syscalls import list_xattrs, open_by_ino


def attr_from_stat(st: os.stat_result, symlink_target: bytes = b"",
                   xattrs: dict[bytes, bytes] | None = None) -> AttrRecord:
    return AttrRecord(
        exists=True, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, nlink=st.st_nlink,
        rdev=st.st_rdev, size=st.st_size, blocks=st.st_blocks, atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, birth_ns=0,
        symlink_target=symlink_target, xattrs=xattrs or {},
    )


def read_live_attr(root_fd: int, ino: int) -> AttrRecord:
    """The object's current attributes, xattrs and symlink target on the backing fs."""
    fd = open_by_ino(root_fd, ino, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        target = os.fsencode(os.readlink("", dir_fd=fd)) if stat.S_ISLNK(st.st_mode) else b""
        return attr_from_stat(st, target, list_xattrs(fd))
    finally:
        os.close(fd)


def read_live_dirent(dir_fd: int, name: bytes) -> DirentRecord:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return ABSENT
    return DirentRecord(st.st_ino, stat.S_IFMT(st.st_mode) >> 12)


def block_span(offset: int, length: int) -> range:
    """The block numbers that bytes [offset, offset+length) touch."""
    if length <= 0:
        return range(0)
    return range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1)


def blocks_below(size: int) -> int:
    """How many blocks hold data for a file of `size` bytes."""
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


class CaptureEngine:
    """The write rule of one volume, over its diff area and its backing root."""

    def __init__(self, area: DiffArea, root_fd: int) -> None:
        self.area = area
        self.root_fd = root_fd

    # ---- questions asked before a change (read transactions are enough) ----

    def born_after(self, txn: lmdb.Transaction, n: int, ino: int) -> bool:
        value = self.area.preimage(txn, schema.attr_object(ino), n)
        return value is not None and not schema.decode_attr(value).exists

    def write_needs_capture(self, txn: lmdb.Transaction, n: int, ino: int, offset: int,
                            length: int) -> bool:
        """Whether a write of [offset, offset+length) would store any pre-image."""
        record = self.area.attr_at(txn, ino, n)
        if record is None:
            return True
        if not record.exists:
            return False
        limit = blocks_below(record.size)
        return any(self.area.preimage(txn, schema.block_object(ino, block), n) is None
                   for block in block_span(offset, length) if block < limit)

    def attr_needs_capture(self, txn: lmdb.Transaction, n: int, ino: int) -> bool:
        return self.area.preimage(txn, schema.attr_object(ino), n) is None

    # ---- captures (run inside the committer's write transaction) ----------

    def attrs(self, txn: lmdb.Transaction, n: int, ino: int) -> AttrRecord:
        """Capture the attributes of `ino` if needed; return their value at `n`."""
        obj = schema.attr_object(ino)
        value = self.area.preimage(txn, obj, n)
        if value is not None:
            return schema.decode_attr(value)
        record = read_live_attr(self.root_fd, ino)
        self.area.put_preimage(txn, obj, n, schema.encode_attr(record))
        return record

    def for_attr_change(self, txn: lmdb.Transaction, n: int, ino: int) -> None:
        """chmod, chown, utimens, xattr changes, and the ctime/nlink side of links."""
        self.attrs(txn, n, ino)

    def for_write(self, txn: lmdb.Transaction, n: int, ino: int, offset: int,
                  length: int) -> None:
        record = self.attrs(txn, n, ino)
        if record.exists:
            self._blocks(txn, n, ino, record.size, block_span(offset, length))

    def for_truncate(self, txn: lmdb.Transaction, n: int, ino: int, new_size: int) -> None:
        record = self.attrs(txn, n, ino)
        if record.exists and new_size < record.size:
            self._blocks(txn, n, ino, record.size,
                         range(new_size // BLOCK_SIZE, blocks_below(record.size)))

    def _blocks(self, txn: lmdb.Transaction, n: int, ino: int, size_at_n: int,
                blocks: range) -> None:
        wanted = [block for block in blocks if block < blocks_below(size_at_n)
                  and self.area.preimage(txn, schema.block_object(ino, block), n) is None]
        if not wanted:
            return
        fd = open_by_ino(self.root_fd, ino, os.O_RDONLY)
        try:
            for block in wanted:
                start = block * BLOCK_SIZE
                keep = min(BLOCK_SIZE, size_at_n - start)
                data = os.pread(fd, keep, start)
                if len(data) < keep:  # the live file is shorter: the rest was zeros
                    data += bytes(keep - len(data))
                self.area.put_block(txn, ino, block, n, data)
        finally:
            os.close(fd)

    def for_entry_change(self, txn: lmdb.Transaction, n: int, dir_ino: int,
                         name: bytes) -> DirentRecord | None:
        """An entry of `dir_ino` is created, removed or replaced: capture it and the dir.

        Returns the entry's value at `n` (None when the directory is newer than `n`).
        """
        dir_record = self.attrs(txn, n, dir_ino)
        if not dir_record.exists:
            return None
        obj = schema.dirent_object(dir_ino, name)
        value = self.area.preimage(txn, obj, n)
        if value is not None:
            return schema.decode_dirent(value)
        dir_fd = open_by_ino(self.root_fd, dir_ino, os.O_PATH | os.O_DIRECTORY)
        try:
            record = read_live_dirent(dir_fd, name)
        finally:
            os.close(dir_fd)
        self.area.put_preimage(txn, obj, n, schema.encode_dirent(record))
        return record

    def note_new_object(self, txn: lmdb.Transaction, n: int, ino: int) -> None:
        """`ino` was just created: mark it as not existing at `n`."""
        self.area.put_preimage(txn, schema.attr_object(ino), n, schema.encode_attr(NONEXISTENT))

    def note_death(self, txn: lmdb.Transaction, n: int, ino: int) -> None:
        """`ino` lost its last name and now lives in the graveyard."""
        self.area.graveyard_add(txn, ino, n)


def remove_from_graveyard(graveyard_fd: int, ino: int) -> None:
    """Free a graveyard object (file or empty directory) no snapshot needs."""
    name = str(ino)
    try:
        os.unlink(name, dir_fd=graveyard_fd)
    except IsADirectoryError:
        _remove_tree(graveyard_fd, name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EISDIR:
            raise
        _remove_tree(graveyard_fd, name)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove a graveyard directory; entries created in it after its death go too."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
