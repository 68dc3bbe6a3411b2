"""Thin wrappers over Linux system calls that Python's os module lacks.

One job: give the rest of shadowfs typed access to file handles
(`open_by_handle_at`, by inode number or as handed out), `renameat2`, `linkat` of a descriptor, `syncfs`,
symlink-safe xattr calls on descriptors and the data regions of a sparse file
(SEEK_DATA/SEEK_HOLE),
raising `OSError` with the right errno like the os module does.

Invariants:
- Handles are built from an inode number alone (handle type FILEID_INO32_GEN
  with generation 0), which ext4 accepts without a generation check. shadowfs
  keeps every inode that a snapshot still refers to alive on the backing
  filesystem (graveyard), so an inode number always names the right object
  for as long as a snapshot needs it. `check_backing_fs` refuses filesystems
  whose handles do not have that shape.
- Nothing here imports pyfuse3 or trio.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

FILEID_INO32_GEN = 1
FILEID_INO32_GEN_PARENT = 2  # <linux/exportfs.h>: the same, followed by the parent's inode and generation
MAX_HANDLE_SZ = 128
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
MAX_INO = 2**32 - 1


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def handle_type_of(path: str) -> int:
    """The file-handle type the filesystem holding `path` hands out."""
    handle = _FileHandle()
    handle.handle_bytes = 128
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(handle),
                               ctypes.byref(mount_id), 0) != 0:
        _raise_errno(f"name_to_handle_at({path})")
    kind: int = handle.handle_type  # a c_int field (ctypes leaves it untyped)
    return kind


def check_backing_fs(path: str) -> None:
    """Raise ValueError unless `path` is on a filesystem shadowfs can protect."""
    try:
        kind = handle_type_of(path)
    except OSError as exc:
        raise ValueError(f"{path}: filesystem does not support file handles ({exc.strerror})") from exc
    if kind != FILEID_INO32_GEN:
        raise ValueError(f"{path}: filesystem hands out file handles of type {kind}; "
                         "shadowfs needs inode-number handles (ext4)")
    # tmpfs hands out the same handle type but does not accept generation 0
    root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        expected = os.fstat(root).st_ino
        try:
            fd = open_by_ino(root, expected, os.O_PATH)
        except OSError as exc:
            raise ValueError(f"{path}: filesystem does not open objects by inode number "
                             f"({exc.strerror}); shadowfs needs ext4") from exc
        try:
            if os.fstat(fd).st_ino != expected:
                raise ValueError(f"{path}: opening by inode number reached another object")
        finally:
            os.close(fd)
    finally:
        os.close(root)


def open_by_ino(mount_fd: int, ino: int, flags: int) -> int:
    """Open the object with inode number `ino` on the filesystem of `mount_fd`.

    Raises OSError(ESTALE) when no such inode exists any more.
    """
    if not 0 < ino <= MAX_INO:
        raise OSError(errno.EOVERFLOW, f"inode number {ino} out of range")
    handle = _FileHandle()
    handle.handle_bytes = 8
    handle.handle_type = FILEID_INO32_GEN
    struct.pack_into("<II", handle.f_handle, 0, ino, 0)
    fd: int = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags | os.O_CLOEXEC)  # untyped C int
    if fd < 0:
        _raise_errno(f"open_by_handle_at(inode {ino})")
    return fd


def open_by_handle(mount_fd: int, handle_type: int, f_handle: bytes, flags: int) -> int:
    """Open the object a file handle (as name_to_handle_at or fanotify give it) names.

    Raises OSError(ESTALE) when the object no longer exists.
    """
    if len(f_handle) > MAX_HANDLE_SZ:
        raise OSError(errno.EINVAL, f"file handle of {len(f_handle)} bytes")
    handle = _FileHandle()
    handle.handle_bytes = len(f_handle)
    handle.handle_type = handle_type
    ctypes.memmove(handle.f_handle, f_handle, len(f_handle))
    fd: int = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags | os.O_CLOEXEC)  # untyped C int
    if fd < 0:
        _raise_errno(f"open_by_handle_at(handle type {handle_type})")
    return fd


def renameat2(old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes,
              flags: int = 0) -> None:
    if _libc.renameat2(old_dir_fd, old_name, new_dir_fd, new_name, ctypes.c_uint(flags)) != 0:
        _raise_errno("renameat2")


AT_EMPTY_PATH = 0x1000


def link_fd(fd: int, new_dir_fd: int, new_name: bytes) -> None:
    """linkat(fd, "", new_dir_fd, new_name, AT_EMPTY_PATH): link the object behind an O_PATH fd.

    Works for symlinks too (the /proc magic-link route does not); needs
    CAP_DAC_READ_SEARCH, which the mount process has as root.
    """
    if _libc.linkat(fd, b"", new_dir_fd, new_name, AT_EMPTY_PATH) != 0:
        _raise_errno("linkat")


def syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        _raise_errno("syncfs")


SYNC_FILE_RANGE_WRITE = 2
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of [offset, offset+length) to disk without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that a later fdatasync finds less to do.
    Durability still needs that fdatasync: this writes no metadata and waits for nothing."""
    if _libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0:
        _raise_errno("sync_file_range")


def proc_path(fd: int) -> str:
    """A path through /proc that reaches the object behind `fd`, even an O_PATH one."""
    return f"/proc/self/fd/{fd}"


def list_xattrs(fd: int) -> dict[bytes, bytes]:
    """All extended attributes of the object behind `fd` (O_PATH allowed).

    The /proc magic link of an O_PATH|O_NOFOLLOW descriptor resolves to the
    symlink itself, not its target, so following it is right for symlinks too.
    """
    path = proc_path(fd)
    try:
        names = os.listxattr(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    result: dict[bytes, bytes] = {}
    for name in names:
        try:
            result[os.fsencode(name)] = os.getxattr(path, name)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                continue  # removed between list and get
            raise
    return result


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, end) regions that may hold data, from SEEK_DATA/SEEK_HOLE (the whole file if unknown)."""
    regions = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            regions.append((start, end))
            pos = end
    except OSError:
        return [(0, size)] if size else []
    return regions
