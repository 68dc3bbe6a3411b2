"""The data file of a diff area: captured block bytes, outside LMDB.

One job: hold the bytes of data-block pre-images in ``blocks.dat``, so that
reading a captured block is a ``pread`` (page cache) rather than a touch of
LMDB's memory map, which would count in the reading process's resident memory.
LMDB keeps only ``(offset, length)`` references. The file is beside the LMDB
environment, or in ``<backing>/.shadowfs/`` on the volume's own filesystem
(reached through a descriptor of that directory, ``dir_fd``: a path would go
through the live mount), where copying a run from the backing file into it
can be a reflink (XFS, btrfs); `DiffArea` decides which (``META_BLOCKS``).

Invariants:
- Writers are the volume's committer thread and its copier thread (capture
  ahead of a writer, `capture.engine.CaptureEngine.copy_ahead`): each extent
  is reserved at the tail under a lock, then written without it. Extents
  start on 4 KiB boundaries so a freed extent can be returned to the
  filesystem whole.
- `copy_from` moves a run of a live file's bytes with ``copy_file_range``:
  no byte passes through Python, and on filesystems that share extents (XFS,
  btrfs, with ``blocks.dat`` on the volume's filesystem) the copy is a clone.
  Where the kernel cannot copy between the two files (another filesystem), it
  falls back to pread/pwrite once and remembers that.
- ``sync`` runs before the LMDB commit that references new extents, so a
  committed reference never points at bytes that are not durable: every
  write finished before `sync` began is durable when it returns (writes are
  counted, and `sync` marks as synced only the count it saw before its
  fdatasync, so a write finishing during it is synced by the next one).
- Readers may pread from several threads at once; the descriptor is opened
  once (under a lock) and closed only when no reader uses it any more (the
  browser defers closing a diff area until its readers are done).
- An extent is punched out only after the commit that dropped its last
  reference (the ``freed`` database records it transactionally), so a crash
  never leaves a reference to a hole. Bytes appended by a transaction that
  never committed are unreferenced and cost space only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from shadowfs.linux.syscalls import start_writeback

ALIGN = 4096
COPY_CHUNK = 1 << 20  # bytes per pread/pwrite when copy_file_range cannot be used
# bytes per copy_file_range call; the disk starts writing each piece while the next is copied
KERNEL_COPY_CHUNK = 4 << 20
# copy_file_range between these two files is not possible: copy through a buffer instead
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
FILE_NAME = "blocks.dat"
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _aligned(length: int) -> int:
    return (length + ALIGN - 1) // ALIGN * ALIGN


def aligned_end(offset: int, length: int) -> int:
    """Where the extent appended after one at (offset, length) starts."""
    return _aligned(offset + length)


class BlockStore:
    """Append-only extents in one file; readers pread, the committer appends and punches."""

    def __init__(self, directory: str, *, writable: bool, dir_fd: int | None = None,
                 unreachable: str | None = None) -> None:
        """`directory` holds the file; relative to `dir_fd` when given (the store then owns `dir_fd`).
        `unreachable`: why the file cannot be opened here (every read then fails with that reason)."""
        self.path = os.path.join(directory, FILE_NAME)
        self.writable = writable
        self._dir_fd = dir_fd
        self._unreachable = unreachable
        self._fd: int | None = None
        self._open_lock = threading.Lock()
        self._tail = 0
        self._tail_lock = threading.Lock()
        self._written = 0  # writes finished (under _tail_lock)
        self._synced = 0  # of those, how many a finished fdatasync covers
        self._kernel_copy = True
        if writable:
            self._open()

    def _open(self) -> int:
        fd = self._fd
        if fd is not None:
            return fd
        with self._open_lock:  # readers of the browser open it lazily from several threads
            if self._fd is None:
                if self._unreachable is not None:
                    raise OSError(errno.ENOENT, f"{self.path}: {self._unreachable}")
                flags = os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY
                fd = os.open(self.path, flags | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd)
                self._tail = _aligned(os.fstat(fd).st_size)
                self._fd = fd
            return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _reserve(self, length: int) -> int:
        """The offset of a new extent of `length` bytes at the tail."""
        with self._tail_lock:
            offset = self._tail
            self._tail = _aligned(offset + length)
            return offset

    def _written_one(self) -> None:
        with self._tail_lock:
            self._written += 1

    def append(self, data: bytes) -> int:
        """Write `data` at the end; returns its offset (durable after `sync`)."""
        fd = self._open()
        offset = self._reserve(len(data))
        self._write_all(fd, data, offset)
        self._written_one()
        return offset

    def copy_from(self, src_fd: int, src_offset: int, length: int) -> int:
        """Append `length` bytes of `src_fd` from `src_offset` on; returns their offset here.

        Bytes past the end of the source read as zeros (the live file was cut shorter than
        the image being kept). Durable after `sync`, like `append`.
        """
        fd = self._open()
        offset = self._reserve(length)
        copied = self._copy(src_fd, src_offset, fd, offset, length)
        if copied < length:
            self._write_all(fd, bytes(length - copied), offset + copied)
        self._written_one()
        return offset

    def _copy(self, src_fd: int, src_offset: int, fd: int, offset: int, length: int) -> int:
        """Copy up to `length` bytes; fewer only where the source ends."""
        done = 0
        while done < length and self._kernel_copy:
            try:
                count = os.copy_file_range(src_fd, fd, min(KERNEL_COPY_CHUNK, length - done),
                                           src_offset + done, offset + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY or done:
                    raise
                self._kernel_copy = False
                break
            if count == 0:
                return done
            start_writeback(fd, offset + done, count)
            done += count
        while done < length:
            data = os.pread(src_fd, min(COPY_CHUNK, length - done), src_offset + done)
            if not data:
                break
            self._write_all(fd, data, offset + done)
            done += len(data)
        return done

    def _write_all(self, fd: int, data: bytes, offset: int) -> None:
        written = os.pwrite(fd, data, offset)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {self.path}: {written} of {len(data)} bytes")

    def sync(self) -> None:
        with self._tail_lock:
            written = self._written
        if written > self._synced and self._fd is not None:
            os.fdatasync(self._fd)
            with self._tail_lock:
                self._synced = max(self._synced, written)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._open(), length, offset)
        if len(data) != length:
            raise OSError(f"{self.path}: extent at {offset} is cut short ({len(data)} of {length} bytes)")
        return data

    def readinto(self, offset: int, out: memoryview) -> None:
        """Fill `out` with the bytes at `offset` (several threads may read at once)."""
        fd = self._open()
        done = 0
        while done < len(out):
            count = os.preadv(fd, [out[done:]], offset + done)
            if count == 0:
                raise OSError(errno.EIO, f"{self.path}: extent at {offset} is cut short "
                              f"({done} of {len(out)} bytes)")
            done += count

    def punch(self, offset: int, length: int) -> None:
        """Give an extent no reference needs back to the filesystem."""
        fd = self._open()
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset,
                           _aligned(length)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"punching a hole in {self.path}: {os.strerror(err)}")

    def disk_bytes(self) -> int:
        try:
            if self._unreachable is None:
                return os.stat(self.path, dir_fd=self._dir_fd).st_blocks * 512
        except FileNotFoundError:
            pass
        return 0
