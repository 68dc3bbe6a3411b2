"""Readers of one snapshot of one volume: the ways the change scan and the backups reach its objects.

One job: answer root / lookup / listdir / meta / read / source / prefetch for one
snapshot (`SnapshotReader`), either as a directory tree (`PathReader`: the
snapshot browser, or a quiet backing directory; objects by path) or through
the read model in this process (`ViewReader`: `SnapshotView`, objects by
backing inode, paths ignored). `ViewSource` serves one file's bytes by inode.

Invariants:
- Nothing is ever written; a reader only reads the snapshot it was made for.
- Every object comes back with its diff-area identity (the backing inode, a
  `BackingIno`) and its kind as S_IFMT bits, whichever way it was reached.
- A read that would see a deleted snapshot fails (`SnapshotView`'s
  read-validate) instead of returning bytes of another instant, so
  `ViewSource` may keep its last few reads: a snapshot's bytes never change.
- An OSError of a read is given the path it was about (`tree.named`), so
  the caller can say which file failed (EIO: damaged in the snapshot).
- `prefetch` is a hint only: it never fails, and whatever it could not warm is
  read (and its error raised) by the call that follows.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Protocol

from shadowfs.diffarea.schema import BLOCK_SIZE, KIND_OF_FMT, BackingIno, blocks_to_ranges
from shadowfs.linux.confined import join
from shadowfs.snapshot.tree import Meta, OpenSource, PathSource, SourceTree, named
from shadowfs.snapshot.view import SnapshotView


class SnapshotReader(Protocol):
    """One snapshot of one volume, by inode (diff-area identity) and path, whichever the reader uses."""

    def root(self) -> BackingIno | None:
        """The inode of the volume's root directory (None if it cannot be read)."""

    def lookup(self, dir_ino: BackingIno, dir_path: str, name: str) -> tuple[BackingIno, int] | None:
        """(inode, S_IFMT) of entry `name` of a directory, or None."""

    def listdir(self, dir_ino: BackingIno, dir_path: str) -> list[tuple[str, BackingIno, int]]:
        """(name, inode, S_IFMT) of every entry of a directory."""

    def meta(self, ino: BackingIno, path: str) -> Meta | None:
        """The object's metadata (xattrs included), or None if it is not there."""

    def read(self, ino: BackingIno, path: str, offset: int, length: int) -> bytes:
        """Bytes of a regular file (short only at its end)."""

    def source(self, ino: BackingIno, path: str, size: int) -> OpenSource:
        """The bytes of a regular file whose size at the snapshot is `size`; close it after use."""

    def prefetch(self, objects: list[tuple[BackingIno, str, list[int]]]) -> None:
        """Warm what the caller reads next: (inode, path, data blocks) of each object, in order."""


class PathReader:
    """A snapshot as a directory tree (the snapshot browser, or a quiet backing directory)."""

    def __init__(self, tree: SourceTree) -> None:
        self.tree = tree

    def root(self) -> BackingIno | None:
        meta = self.tree.meta("")
        return None if meta is None else meta.ino

    def lookup(self, dir_ino: BackingIno, dir_path: str, name: str) -> tuple[BackingIno, int] | None:
        return self.tree.lookup(dir_path, name)

    def listdir(self, dir_ino: BackingIno, dir_path: str) -> list[tuple[str, BackingIno, int]]:
        return self.tree.listdir(dir_path)

    def meta(self, ino: BackingIno, path: str) -> Meta | None:
        return self.tree.meta(path)

    def read(self, ino: BackingIno, path: str, offset: int, length: int) -> bytes:
        fd = self.tree.open_file(path)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def source(self, ino: BackingIno, path: str, size: int) -> PathSource:
        return self.tree.source(path)

    def prefetch(self, objects: list[tuple[BackingIno, str, list[int]]]) -> None:
        """Look the paths up from several threads: on a cold cache each lookup waits for the disk,
        and from threads the kernel overlaps part of those waits (measured through the snapshot
        browser: 200 changed files of 20,000, their metadata 0.18 s -> 0.10 s plus 0.03 s here).
        Only lstat: a symlink on the way can mislead a lookup but never a read."""

        def look(item: tuple[BackingIno, str, list[int]]) -> None:
            try:
                os.stat(item[1], dir_fd=self.tree.tree.root_fd, follow_symlinks=False)
            except OSError:
                pass

        _in_threads(look, objects)


class ViewReader:
    """A snapshot through the read model (`SnapshotView`), by inode; paths name errors only."""

    def __init__(self, view: SnapshotView) -> None:
        self.view = view

    def root(self) -> BackingIno | None:
        return self.view.root_ino

    def lookup(self, dir_ino: BackingIno, dir_path: str, name: str) -> tuple[BackingIno, int] | None:
        with named(join(dir_path, name)):
            try:
                entry = self.view.lookup(dir_ino, os.fsencode(name))
            except FileNotFoundError:
                return None
            return entry.ino, stat.S_IFMT(self.view.attr(entry.ino).mode)

    def listdir(self, dir_ino: BackingIno, dir_path: str) -> list[tuple[str, BackingIno, int]]:
        with named(dir_path):
            entries = self.view.listdir(dir_ino)
        out = []
        for name, entry in entries:
            with named(join(dir_path, os.fsdecode(name))):
                out.append((os.fsdecode(name), entry.ino, stat.S_IFMT(self.view.attr(entry.ino).mode)))
        return out

    def meta(self, ino: BackingIno, path: str) -> Meta | None:
        with named(path):
            try:
                record = self.view.attr(ino, with_xattrs=True)
            except FileNotFoundError:
                return None
        return Meta(KIND_OF_FMT[stat.S_IFMT(record.mode)], record.mode, record.uid, record.gid,
                    0 if record.is_dir else record.size, record.atime_ns, record.mtime_ns, record.ctime_ns,
                    record.nlink, record.rdev, ino, {os.fsdecode(k): v for k, v in record.xattrs.items()},
                    os.fsdecode(record.symlink_target) if record.is_symlink else None)

    def read(self, ino: BackingIno, path: str, offset: int, length: int) -> bytes:
        with named(path):
            size = self.view.attr(ino).size
            return self.view.read(ino, offset, length, size)

    def source(self, ino: BackingIno, path: str, size: int) -> ViewSource:
        return ViewSource(self.view, ino, size, path)

    def prefetch(self, objects: list[tuple[BackingIno, str, list[int]]]) -> None:
        """Open the objects (the descriptors stay in the view's cache for the reads that follow) and
        ask the kernel to start reading their live data blocks, all before the first read waits:
        the disk then serves those reads together. (Measured, 200 changed files of 20,000 on a
        cold cache: their metadata and a block each 0.04-0.08 s one after the other, 0.016 s
        after this; from eight threads instead 0.03-0.05 s, the hand-over costing more.)"""
        live = self.view.live
        for ino, _, blocks in objects:
            try:
                if not blocks:
                    with live.borrow(ino):
                        continue
                with live.borrow(ino, os.O_RDONLY | os.O_NOFOLLOW) as fd:
                    for start, length in blocks_to_ranges(blocks, (max(blocks) + 1) * BLOCK_SIZE):
                        os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                continue  # gone, or not a regular file: the read that follows says what is wrong


class ViewSource(OpenSource):
    """The bytes of one regular file of a snapshot, through the read model, by inode.

    The last few reads are kept: a backup reads a changed block to compare it with its
    pre-image and then the same range again to store it, and a snapshot's bytes never change
    (a read that would see a deleted snapshot fails instead)."""

    KEEP = 8  # reads of at most KEEP_BYTES each
    KEEP_BYTES = 4 * BLOCK_SIZE

    def __init__(self, view: SnapshotView, ino: BackingIno, size: int, path: str = "") -> None:
        self.view = view
        self.ino = ino
        self.size = size
        self.path = path  # names its errors only
        self._kept: dict[tuple[int, int], bytes] = {}

    def pread(self, length: int, offset: int) -> bytes:
        data = self._kept.get((offset, length))
        if data is None:
            with named(self.path):
                data = bytes(self.view.read_buffer(self.ino, offset, length, self.size))
            if length > self.KEEP_BYTES:
                return data
            if len(self._kept) >= self.KEEP:
                del self._kept[next(iter(self._kept))]
            self._kept[(offset, length)] = data
        return data

    def data_regions(self, size: int) -> list[tuple[int, int]]:
        with named(self.path):
            return self.view.data_regions(self.ino, min(size, self.size))

    def close(self) -> None:
        self._kept.clear()


def _in_threads(work: Callable[[tuple[BackingIno, str, list[int]]], None],
                items: list[tuple[BackingIno, str, list[int]]], threads: int = 8) -> None:
    if len(items) < 2 * threads:
        return  # too few to gain from the hand-over
    from concurrent.futures import ThreadPoolExecutor  # here: an import a CLI call need not pay

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(work, items):
            pass


__all__ = ["PathReader", "SnapshotReader", "ViewReader", "ViewSource"]
