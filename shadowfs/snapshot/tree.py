"""Reading a tree to back up — a snapshot in the browser, or any directory — without following links.

One job: metadata and data of every object under a root, exactly as the
tree shows them. `SourceTree.walk` visits every object in pre-order with names
sorted (so parents come before children and the first path of a hard-link
group comes first), through directory descriptors opened with O_NOFOLLOW; a
symlink is recorded, never entered or followed. `SparseReader` reads a regular
file's bytes (any `ByteSource`: a file of the tree opened lazily, `PathSource`,
or a snapshot's file by inode, `readers.ViewSource`) as data extents: holes
(SEEK_HOLE where the filesystem knows them, and every 4 KiB block of zeros) are
skipped, so sparse files stay sparse on the media and after a restore.

Invariants:
- Inode numbers are recorded masked to 32 bits: in the snapshot browser the
  low 32 bits of st_ino are the backing inode (`browser.nodes.snapshot_node`), the
  identity the diff area uses; on ext4 backing trees the mask changes nothing.
  So every inode number this module hands out is a `BackingIno`, typed where
  it is masked.
- Names hidden at the root (``.shadowfs`` of a backing directory) are never
  visited.
- An OSError of a walk or a read names the path it was about (`with_path`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, Self

from shadowfs.diffarea.schema import KIND_OF_FMT, BackingIno
from shadowfs.linux.confined import DIR_FLAGS, Confined, at_path, join
from shadowfs.linux.syscalls import data_regions

INO_MASK = 0xFFFFFFFF
READ_CHUNK = 1 << 20
ZERO_BLOCK = 4096
_ZEROS = bytes(READ_CHUNK)


@dataclass
class Meta:
    """What a backup records about one object (all but its data)."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    ino: BackingIno
    xattrs: dict[str, bytes] = field(default_factory=dict)
    target: str | None = None

    @property
    def fmt(self) -> int:
        return stat.S_IFMT(self.mode)


def with_path(exc: OSError, path: str) -> OSError:
    """`exc` naming the path, relative to the tree's root ("/" for the root), of the object it was
    about: a call through a directory descriptor names the last component at most, a read by
    inode nothing, and the caller must say which file failed (EIO: damaged in the snapshot,
    design §9.3). Its errno, so its class, stays."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, path or "/")


@contextmanager
def named(path: str) -> Iterator[None]:
    """Raise every OSError from inside `with_path(path)`."""
    try:
        yield
    except OSError as exc:
        raise with_path(exc, path) from exc


def read_xattrs(dir_fd: int, name: str) -> dict[str, bytes]:
    """Every xattr of entry `name` of `dir_fd` (not followed)."""
    path = at_path(dir_fd, name)
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.ENOENT):
            return {}
        raise
    out: dict[str, bytes] = {}
    for attr in names:
        try:
            out[attr] = os.getxattr(path, attr, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return out


def meta_at(dir_fd: int, name: str, st: os.stat_result | None = None) -> Meta:
    """The metadata of entry `name` of `dir_fd` ("." for the directory itself)."""
    if st is None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = KIND_OF_FMT.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        raise OSError(errno.EINVAL, f"{name}: unknown file type {st.st_mode:o}")
    target = os.fsdecode(os.readlink(name, dir_fd=dir_fd)) if kind == "symlink" else None
    return Meta(kind, st.st_mode, st.st_uid, st.st_gid, 0 if kind == "dir" else st.st_size, st.st_atime_ns,
                st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_rdev, BackingIno(st.st_ino & INO_MASK),
                read_xattrs(dir_fd, name), target)


class SourceTree:
    """A tree to read, under one root descriptor."""

    def __init__(self, root: str, *, hidden: Collection[str] = ()) -> None:
        self.root = os.path.abspath(root)
        self.tree = Confined.open_root(root)
        self.hidden = frozenset(hidden)

    def close(self) -> None:
        self.tree.close()

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _names(self, dir_fd: int, path: str) -> list[str]:
        with os.scandir(dir_fd) as scan:
            names = sorted(entry.name for entry in scan)
        if path == "" and self.hidden:
            names = [n for n in names if n not in self.hidden]
        return names

    def walk(self, top: str = "") -> Iterator[tuple[str, Meta]]:
        """Every object at and below `top` (a path from the root, never followed; nothing if it is
        not there), pre-order, names sorted; the root is ``""``."""
        root_fd = self.tree.root_fd
        with named(top):
            first = self.meta(top) if top else meta_at(root_fd, ".")
            if first is None:
                return
        yield top, first
        if first.kind != "dir":
            return
        with named(top):
            start = self.tree.open(top, DIR_FLAGS) if top else root_fd
        stack: list[tuple[int, str, Iterator[str]]] = []
        try:
            with named(top):
                stack.append((start, top, iter(self._names(start, top))))
        except BaseException:
            if start != root_fd:
                os.close(start)
            raise
        try:
            while stack:
                dir_fd, path, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if dir_fd != root_fd:
                        os.close(dir_fd)
                    continue
                child = join(path, name)
                try:
                    meta = meta_at(dir_fd, name)
                except FileNotFoundError:
                    continue  # gone (live trees only)
                except OSError as exc:
                    raise with_path(exc, child) from exc
                yield child, meta
                if meta.kind == "dir":
                    try:
                        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                            continue  # replaced meanwhile (live trees only): never followed
                        raise with_path(exc, child) from exc
                    try:
                        listed = self._names(fd, child)
                    except BaseException as exc:
                        os.close(fd)
                        if isinstance(exc, OSError):
                            raise with_path(exc, child) from exc
                        raise
                    stack.append((fd, child, iter(listed)))
        finally:
            for fd, _, _ in stack:
                if fd != root_fd:
                    os.close(fd)

    def meta(self, path: str) -> Meta | None:
        """The metadata at `path`, or None if nothing (or no directory on the way) is there."""
        try:
            if path == "":
                return meta_at(self.tree.root_fd, ".")
            dir_fd, name = self.tree.parent(path)
            return meta_at(dir_fd, name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError:  # UnsafePath: a symlink on the way
            return None

    def lookup(self, path: str, name: str) -> tuple[BackingIno, int] | None:
        """(masked inode, S_IFMT) of entry `name` of directory `path`, or None."""
        if path == "" and name in self.hidden:
            return None
        try:
            st = os.stat(name, dir_fd=self.tree.dir_fd(path), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return BackingIno(st.st_ino & INO_MASK), stat.S_IFMT(st.st_mode)

    def listdir(self, path: str) -> list[tuple[str, BackingIno, int]]:
        """(name, masked inode, S_IFMT) of every entry of directory `path`, names sorted."""
        dir_fd = self.tree.dir_fd(path)
        out = []
        for name in self._names(dir_fd, path):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            out.append((name, BackingIno(st.st_ino & INO_MASK), stat.S_IFMT(st.st_mode)))
        return out

    def open_file(self, path: str) -> int:
        """A read descriptor of the regular file at `path` (never a symlink; never blocks on a fifo)."""
        fd = self.tree.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
        return fd

    def source(self, path: str) -> PathSource:
        """The bytes of the regular file at `path`, opened at the first read; close it after use."""
        return PathSource(self, path)


class ByteSource(Protocol):
    """The bytes of one regular file as a backup reads them."""

    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset` (short only at the end of the file)."""

    def data_regions(self, size: int) -> list[tuple[int, int]]:
        """(offset, end) regions below `size` that may hold data; the rest reads as zeros."""


class OpenSource(ByteSource):
    """A `ByteSource` that may hold a resource until `close` (also as a context manager)."""

    def close(self) -> None:
        """Release what the source holds (nothing here)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PathSource(OpenSource):
    """A regular file of a `SourceTree`, opened at the first read (a file that turns out to
    need no read is never opened); `close` releases the descriptor."""

    def __init__(self, tree: SourceTree, path: str) -> None:
        self.tree = tree
        self.path = path
        self.fd = -1

    def _open(self) -> int:
        if self.fd < 0:
            self.fd = self.tree.open_file(self.path)
        return self.fd

    def pread(self, length: int, offset: int) -> bytes:
        with named(self.path):
            return os.pread(self._open(), length, offset)

    def data_regions(self, size: int) -> list[tuple[int, int]]:
        with named(self.path):
            return data_regions(self._open(), size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SparseReader:
    """The bytes of one file as data extents; iterate `chunks()` first, then read `extents`/`sha256`.

    With `regions` given (a patch), exactly those byte ranges are read and
    kept, zeros included; otherwise the whole file is read with holes left out
    and `sha256` is the checksum of the whole content.
    """

    def __init__(self, source: ByteSource, size: int, regions: list[tuple[int, int]] | None = None) -> None:
        self.source = source
        self.size = size
        self.patch = regions is not None
        self.regions = [(o, o + n) for o, n in regions] if regions is not None else source.data_regions(size)
        self.extents: list[tuple[int, int]] = []
        self.bytes = 0
        self._digest = None if self.patch else hashlib.sha256()

    @property
    def sha256(self) -> str | None:
        return None if self._digest is None else self._digest.hexdigest()

    def _extent(self, offset: int, length: int) -> None:
        if self.extents and self.extents[-1][0] + self.extents[-1][1] == offset:
            last = self.extents[-1]
            self.extents[-1] = (last[0], last[1] + length)
        else:
            self.extents.append((offset, length))
        self.bytes += length

    def _zeros(self, length: int) -> None:
        assert self._digest is not None
        while length > 0:
            step = min(length, READ_CHUNK)
            self._digest.update(_ZEROS[:step])
            length -= step

    def chunks(self) -> Iterator[bytes]:
        for _, data in self.pieces():
            yield data

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        """`chunks`, each with the offset in the file where it belongs."""
        pos = 0
        for start, end in self.regions:
            if self._digest is not None:
                self._zeros(start - pos)
            pos = start
            while pos < end:
                data = self.source.pread(min(READ_CHUNK, end - pos), pos)
                if not data:
                    break  # shorter than it said (live trees only): the rest reads as zeros
                if self._digest is not None:
                    self._digest.update(data)
                for piece in self._pieces(pos, data):
                    last_offset, last_length = self.extents[-1]  # the piece ends its extent
                    yield last_offset + last_length - len(piece), piece
                pos += len(data)
        if self._digest is not None:
            self._zeros(self.size - pos)

    def _pieces(self, offset: int, data: bytes) -> Iterator[bytes]:
        if self.patch:
            self._extent(offset, len(data))
            yield data
            return
        if data.count(0) == len(data):
            return
        view = memoryview(data)
        run_start = -1
        for low in range(0, len(data), ZERO_BLOCK):
            block = view[low:low + ZERO_BLOCK]
            zero = block == _ZEROS[:len(block)]
            if not zero and run_start < 0:
                run_start = low
            elif zero and run_start >= 0:
                self._extent(offset + run_start, low - run_start)
                yield bytes(view[run_start:low])
                run_start = -1
        if run_start >= 0:
            self._extent(offset + run_start, len(data) - run_start)
            yield bytes(view[run_start:])
