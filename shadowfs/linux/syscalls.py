"""Thin wrappers over Linux system calls that Python's os module lacks.

One job: give the rest of shadowfs typed access to file handles
(`open_by_handle_at`, by inode number or as handed out), `renameat2`, `linkat` of a descriptor, `syncfs`,
symlink-safe xattr calls on descriptors and the data regions of a sparse file
(SEEK_DATA/SEEK_HOLE),
raising `OSError` with the right errno like the os module does.

Invariants:
- `open_by_ino` builds a handle from an inode number alone: on ext4
  FILEID_INO32_GEN with generation 0 (ext4 skips the generation check), on
  XFS and btrfs the filesystem's own handle with the inode's generation
  (`fshandles`). shadowfs keeps every inode that a snapshot still refers to
  alive on the backing filesystem (graveyard), so an inode number always
  names the right object for as long as a snapshot needs it.
  `check_backing_fs` refuses any other filesystem, naming it.
- Nothing here imports pyfuse3 or trio.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct

from shadowfs.linux import fshandles
from shadowfs.linux.fshandles import FILEID_INO32_GEN as FILEID_INO32_GEN
from shadowfs.linux.fshandles import FILEID_INO32_GEN_PARENT as FILEID_INO32_GEN_PARENT
from shadowfs.linux.fshandles import MAX_HANDLE_SZ as MAX_HANDLE_SZ
from shadowfs.linux.fshandles import _FileHandle

_libc = ctypes.CDLL(None, use_errno=True)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
MAX_INO = 2**32 - 1


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def handle_type_of(path: str) -> int:
    """The file-handle type the filesystem holding `path` hands out."""
    return fshandles.name_to_handle(AT_FDCWD, os.fsencode(path))[0]


def check_backing_fs(path: str) -> None:
    """Raise ValueError unless `path` is on a filesystem shadowfs can protect (ext4, XFS, btrfs)
    and its root opens again by inode number; the message names the filesystem and the path."""
    root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fs = fshandles.filesystem_of(root, fresh=True)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        expected = os.fstat(root).st_ino
        try:
            fd = open_by_ino(root, expected, os.O_PATH)
        except OSError as exc:
            raise ValueError(f"{path}: {fs.kind.value} does not open objects by inode number here "
                             f"({exc.strerror})") from exc
        try:
            if os.fstat(fd).st_ino != expected:
                raise ValueError(f"{path}: opening by inode number reached another object")
        finally:
            os.close(fd)
        if fs.kind is fshandles.FsKind.BTRFS:
            _check_one_subvolume(path, root, fs)
    finally:
        os.close(root)


def _check_one_subvolume(path: str, root: int, fs: fshandles.Filesystem) -> None:
    """Raise ValueError if the btrfs tree at `path` holds another subvolume or a mount: inode numbers
    restart in every subvolume, so a volume must be one."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = os.fsdecode(line.split()[4].replace(b"\\040", b" ").replace(b"\\011", b"\t")
                                .replace(b"\\012", b"\n").replace(b"\\134", b"\\"))
            if point.startswith(real.rstrip("/") + "/"):
                raise ValueError(f"{path}: {point} is a mount inside the tree; a btrfs volume must be "
                                 "one subvolume with no mounts inside")
    try:
        children = fshandles.btrfs_child_subvolumes(root, fs.root_id)
    except OSError as exc:
        raise ValueError(f"{path}: cannot list the btrfs subvolumes inside it ({exc.strerror})") from exc
    for dirid, name in children:
        try:
            fd = open_by_ino(root, dirid, os.O_PATH)
        except OSError:
            continue  # its directory is gone (a subvolume deleted but not yet cleaned)
        try:
            where = os.path.join(os.readlink(proc_path(fd)), os.fsdecode(name))
        finally:
            os.close(fd)
        if where == real or where.startswith(real.rstrip("/") + "/"):
            raise ValueError(f"{path}: {where} is another btrfs subvolume; a btrfs volume must be one "
                             "subvolume (inode numbers restart in each): protect each subvolume "
                             "as a volume of its own")


def open_by_ino(mount_fd: int, ino: int, flags: int) -> int:
    """Open the object with inode number `ino` on the filesystem of `mount_fd`.

    On ext4 the handle carries generation 0 (no lookup); on XFS and btrfs the
    generation comes from `fshandles` (cache, else the filesystem). Raises
    OSError(ESTALE) when no such inode exists any more, ValueError for a
    filesystem shadowfs does not protect.
    """
    if not 0 < ino <= MAX_INO:
        raise OSError(errno.EOVERFLOW, f"inode number {ino} out of range")
    fs = fshandles.filesystem_of(mount_fd)
    try:
        return _open_on(fs, mount_fd, ino, flags)
    except OSError:
        fresh = fshandles.redetect(mount_fd, fs)  # its device number may now hold another filesystem
        if fresh is fs:
            raise
    return _open_on(fresh, mount_fd, ino, flags)


def _open_on(fs: fshandles.Filesystem, mount_fd: int, ino: int, flags: int) -> int:
    if not fs.needs_generation:
        handle = _FileHandle()
        handle.handle_bytes = 8
        handle.handle_type = FILEID_INO32_GEN
        struct.pack_into("<II", handle.f_handle, 0, ino, 0)
        fd: int = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags | os.O_CLOEXEC)  # C int
        if fd < 0:
            _raise_errno(f"open_by_handle_at(inode {ino})")
        return fd
    gen = fs.cached(ino)
    if gen is not None:
        try:
            return open_by_handle(mount_fd, fs.handle_type, fs.handle(ino, gen), flags)
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            fs.forget(ino)  # the number was reused since: look it up again
    gen = fs.lookup(mount_fd, ino)
    try:
        return open_by_handle(mount_fd, fs.handle_type, fs.handle(ino, gen), flags)
    except OSError:
        fs.forget(ino)
        raise


def remember_generation(mount_fd: int, fd: int) -> None:
    """Note the generation of the object behind `fd` (O_PATH allowed) for `open_by_ino` on the
    filesystem of `mount_fd`; nothing on ext4, which needs none."""
    with contextlib.suppress(OSError, ValueError):
        fshandles.filesystem_of(mount_fd).remember(fd)


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
