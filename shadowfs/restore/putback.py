"""Putting one object back: its owner, mode, xattrs and times, and special files made under a name.

One job: the part of writing an object that a restore from media and a revert
from a snapshot share. What to put back comes as an `ObjectMeta` (a media
`Record` and a snapshot's `tree.Meta` both are one); where it goes is a
descriptor, or a directory descriptor and a name.

Invariants:
- The order is owner, mode, xattrs, times: chown clears set-id bits, so the
  mode comes after it; a POSIX ACL's mask is the mode's group bits, so the ACL
  (an xattr) and the mode agree whichever was set last; times come last,
  since every other change moves the ctime and some the mtime. The ctime
  cannot be set from user space: it stays the time of the put back.
- Nothing is followed: symlinks, fifos, sockets and device nodes are reached
  through an O_PATH | O_NOFOLLOW descriptor of the object itself, and a
  descriptor whose file type is not the one expected is refused (the name was
  replaced meanwhile) before anything is set through it.
- Not running as root, an owner that cannot be given is a warning in
  `warnings` (once per object), not a failure; as root it is an error.
- Xattrs the object has and the metadata lacks are removed, except those the
  filesystem does not let anyone remove (EPERM and the like).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any, Protocol

from shadowfs.errors import RestoreError
from shadowfs.linux.confined import fd_path

OWNER_WARNING = "owners not restored: not running as root"


class ObjectMeta(Protocol):
    """What is put back of one object (besides its data)."""

    kind: str  # a `diffarea.schema.KINDS` name
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    rdev: int
    xattrs: dict[str, bytes]
    target: str | None  # a symlink's


class MetadataWriter:
    """Sets owner, mode, xattrs and times; makes symlinks and special files."""

    def __init__(self, warnings: list[str]) -> None:
        self.is_root = os.geteuid() == 0
        self.warnings = warnings

    def _chown(self, call: Callable[[], None]) -> None:
        try:
            call()
        except PermissionError:
            if self.is_root:
                raise
            self.warnings.append(OWNER_WARNING)

    def set_xattrs(self, target: str | int, wanted: dict[str, bytes], follow: bool) -> None:
        """Make the xattrs of `target` (a path, or a descriptor) exactly `wanted`."""
        kwargs: dict[str, Any] = {} if isinstance(target, int) else {"follow_symlinks": follow}
        try:
            present = set(os.listxattr(target, **kwargs))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM) and not wanted:
                return
            raise
        for name in present - set(wanted):
            try:
                os.removexattr(target, name, **kwargs)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EACCES):
                    raise
        for name, value in wanted.items():
            os.setxattr(target, name, value, **kwargs)

    def on_fd(self, fd: int, meta: ObjectMeta) -> None:
        """Owner, mode, xattrs and times of a regular file or directory, through its descriptor."""
        self._chown(lambda: os.chown(fd, meta.uid, meta.gid))
        os.chmod(fd, stat.S_IMODE(meta.mode))
        self.set_xattrs(fd, meta.xattrs, True)
        os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))

    def on_special(self, dir_fd: int, name: str, meta: ObjectMeta, where: str) -> None:
        """The same for the symlink, fifo, socket or device node `name` of `dir_fd`, never following
        it; `where` names it in the error raised when it is not of the kind expected."""
        self._chown(lambda: os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False))
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(meta.mode):
                raise RestoreError(f"{where}: replaced while being restored")
            if meta.kind != "symlink":
                os.chmod(fd_path(fd), stat.S_IMODE(meta.mode))
            self.set_xattrs(fd_path(fd), meta.xattrs, True)
        finally:
            os.close(fd)
        os.utime(name, ns=(meta.atime_ns, meta.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def make_special(self, dir_fd: int, name: str, meta: ObjectMeta, where: str) -> None:
        """Make the symlink, fifo, socket or device node `name` of `dir_fd` with all its metadata;
        nothing is left under `name` if that fails."""
        if meta.kind == "symlink":
            if meta.target is None:
                raise RestoreError(f"{where}: a symlink without a target")
            os.symlink(meta.target, name, dir_fd=dir_fd)
        else:
            os.mknod(name, meta.mode, meta.rdev, dir_fd=dir_fd)
        try:
            self.on_special(dir_fd, name, meta, where)
        except BaseException:
            os.unlink(name, dir_fd=dir_fd)
            raise
