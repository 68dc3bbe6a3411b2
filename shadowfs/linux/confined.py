"""Confined file-system access: every path is walked component by component from a root descriptor.

One job: let the backup side read a tree and the restore side change a tree
without ever leaving it. A relative path is checked (`check_rel_path`), then
each directory on the way is opened with ``openat(dir_fd, name, O_DIRECTORY |
O_NOFOLLOW)``; the last component is handled with a `*at` call on its parent's
descriptor and never followed. Metadata calls that have no `*at` form are made
through ``/proc/self/fd/<parent>/<name>`` without following the last component,
or through ``/proc/self/fd/<fd>`` of an ``O_PATH | O_NOFOLLOW`` descriptor
(which names the object itself, a symlink included).

Invariants:
- A path is ``""`` (the root) or ``/``-separated names; no name is empty,
  ``.``, ``..``, longer than 255 bytes, or contains NUL; no path is absolute or
  longer than 4096 bytes. Anything else raises `UnsafePath` before any call.
- No symlink is ever followed below the root, and `Confined` never opens a
  directory that is not a real directory (ELOOP / ENOTDIR become `UnsafePath`).
- With ``same_device``, no directory on another file system (a mount point,
  a bind mount planted in a restore target) is ever entered.
- Descriptors of directories are cached (few, most recently used first) and
  dropped whenever the tree below them may have been replaced by this object.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from shadowfs.errors import UnsafePath as UnsafePath
from shadowfs.linux.fdcache import DescriptorCache

NAME_MAX = 255
PATH_MAX = 4096
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> None:
    """One path component as a directory entry name (str, surrogate escapes allowed)."""
    if not isinstance(name, str):
        raise UnsafePath(f"name {name!r} is not a string")
    if not name or name in (".", ".."):
        raise UnsafePath(f"bad name {name!r}")
    if "/" in name or "\0" in name:
        raise UnsafePath(f"name {name!r} contains '/' or NUL")
    if len(os.fsencode(name)) > NAME_MAX:
        raise UnsafePath(f"name {name[:40]!r}... is longer than {NAME_MAX} bytes")


_PLAIN_PATH = re.compile(r"(?:[^/\0]{1,255}/)*[^/\0]{1,255}\Z", re.ASCII)
_DOT_PART = re.compile(r"(?:\A|/)\.\.?(?:/|\Z)")


_PLAIN_LINES = re.compile(r"(?:(?:[^/\0\n]{1,255}/)*[^/\0\n]{1,255}\n)*\Z", re.ASCII)
_DOT_PART_LINES = re.compile(r"(?:^|/)\.\.?(?:/|$)", re.MULTILINE)


def check_rel_paths(paths: list[str]) -> None:
    """`check_rel_path` of every path, in one regular-expression pass when they are all plain."""
    rest = [p for p in paths if p != ""]
    if rest and all(type(p) is str for p in rest):
        joined = "\n".join(rest) + "\n"
        if (joined.isascii() and max(map(len, rest)) <= PATH_MAX and joined.count("\n") == len(rest)
                and _PLAIN_LINES.match(joined) and not _DOT_PART_LINES.search(joined)):
            return
    for path in rest:
        check_rel_path(path)


def check_rel_path(path: str) -> list[str]:
    """The components of a path relative to a tree root ("" is the root itself)."""
    if not isinstance(path, str):
        raise UnsafePath(f"path {path!r} is not a string")
    if path == "":
        return []
    if path.isascii() and len(path) <= PATH_MAX and _PLAIN_PATH.match(path) and not _DOT_PART.search(path):
        return path.split("/")  # the common case, decided without encoding every name
    if path.startswith("/"):
        raise UnsafePath(f"path {path!r} is absolute")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise UnsafePath(f"path {path!r} is not encodable") from None
    if len(encoded) > PATH_MAX:
        raise UnsafePath(f"path {path[:60]!r}... is longer than {PATH_MAX} bytes")
    parts = path.split("/")
    for part in parts:
        try:
            check_name(part)
        except UnsafePath as exc:
            raise UnsafePath(f"path {path!r}: {exc}") from None
    return parts


def split_parent(path: str) -> tuple[str, str]:
    """(parent path, last name) of a non-root relative path."""
    parts = check_rel_path(path)
    if not parts:
        raise UnsafePath("the root has no parent")
    return "/".join(parts[:-1]), parts[-1]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def at_path(dir_fd: int, name: str) -> str:
    """A path reaching entry `name` of the directory behind `dir_fd` (name not followed by *at calls
    given follow_symlinks=False)."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def fd_path(fd: int) -> str:
    """The /proc path of the object behind `fd` itself (an O_PATH|O_NOFOLLOW fd: the symlink itself)."""
    return f"/proc/self/fd/{fd}"


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of one entry, or None if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Confined:
    """A tree under one root descriptor (owned by this object; closed by `close`)."""

    def __init__(self, root_fd: int, *, cache: int = 64, same_device: bool = False) -> None:
        self.root_fd = root_fd
        self.device = os.fstat(root_fd).st_dev if same_device else None
        # directories by path; `dir_fd` opens them itself, component by component
        self._dirs: DescriptorCache[str] = DescriptorCache(cache, self._open_dir)

    @classmethod
    def open_root(cls, root: str, *, same_device: bool = False) -> Confined:
        """Open `root` (the caller's choice of root: it is followed if it is a symlink)."""
        return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), same_device=same_device)

    def close(self) -> None:
        self._dirs.close()
        os.close(self.root_fd)

    def __enter__(self) -> Confined:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- directories ------------------------------------------------------------------------

    def forget(self, prefix: str) -> None:
        """Drop cached descriptors of `prefix` and everything below it ("" drops all)."""
        self._dirs.discard(lambda key: not prefix or key == prefix or key.startswith(prefix + "/"))

    def dir_fd(self, path: str) -> int:
        """A descriptor of directory `path` (cached; do not close). UnsafePath if any component on
        the way is a symlink or not a directory; FileNotFoundError if it does not exist."""
        if not check_rel_path(path):
            return self.root_fd
        return self._dirs.open(path)

    def _open_dir(self, path: str) -> int:
        parts = check_rel_path(path)
        parent = self.dir_fd("/".join(parts[:-1]))
        try:
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(f"{path!r} is not a directory (symlink or file in the way)") from None
            raise
        if self.device is not None and os.fstat(fd).st_dev != self.device:
            os.close(fd)
            raise UnsafePath(f"{path!r} is on another file system (a mount point): not entered")
        return fd

    def parent(self, path: str) -> tuple[int, str]:
        """(descriptor of the parent directory, last name) of a non-root path."""
        head, name = split_parent(path)
        return self.dir_fd(head), name

    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of `path` inside the tree (None if it or a parent is missing)."""
        if path == "":
            return os.fstat(self.root_fd)
        try:
            dir_fd, name = self.parent(path)
        except FileNotFoundError:
            return None
        return lstat_at(dir_fd, name)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """Open the last component with O_NOFOLLOW added (the caller closes the descriptor)."""
        if path == "":
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.root_fd)
        dir_fd, name = self.parent(path)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)

    def open_path(self, path: str) -> int:
        """An O_PATH descriptor of the object at `path` itself (never followed)."""
        return self.open(path, os.O_PATH)

    # ---- changing ---------------------------------------------------------------------------

    def remove(self, path: str) -> bool:
        """Remove whatever is at `path` (a directory with everything in it); False if nothing was."""
        dir_fd, name = self.parent(path)
        st = lstat_at(dir_fd, name)
        if st is None:
            return False
        if stat.S_ISDIR(st.st_mode):
            self.forget(path)
            remove_tree_at(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)
        return True

    def make_dir(self, path: str, mode: int = 0o700) -> int:
        """Make sure `path` is a real directory (replacing anything else there); its descriptor."""
        if path == "":
            return self.root_fd
        dir_fd, name = self.parent(path)
        st = lstat_at(dir_fd, name)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            st = None
        if st is None:
            self.forget(path)
            os.mkdir(name, mode, dir_fd=dir_fd)
        return self.dir_fd(path)


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove directory `name` of `parent_fd` and everything in it, never following a symlink."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            os.unlink(name, dir_fd=parent_fd)
            return
        raise
    try:
        with os.scandir(fd) as scan:
            entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
        for child, is_dir in entries:
            if is_dir:
                remove_tree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
