"""What changed between two snapshots of a volume, straight from the diff area's capture keys.

One job: DESIGN section 6, last paragraph. A pre-image of object ``o`` is
stored under the sequence of the newest snapshot at the moment of ``o``'s first
change after it (capture rule), and the delete rule only ever drops a key in
``[d, e)`` when an older key in ``[p, d)`` remains. So for two remaining
snapshots ``base < new``:

    o differs between base and new  =>  o has a pre-image keyed in [base, new)

and the ``bysnap`` index lists exactly those keys, in sequence order: `scan`
reads ``bysnap`` from ``base`` up to ``new`` and nothing else. Each candidate's
value at ``base`` is its pre-image with the smallest sequence ``>= base``
(which lies in ``[base, new)``); its value at ``new`` is read from the snapshot
``new`` itself through a `SnapshotReader`; a candidate whose two values are
equal (written back, renamed back) did not change.

From the candidates:

- `tree_at_new` turns a directory tree at ``base`` (from a walk, or from the
  base image's manifest) into the tree at ``new`` by looking up only the
  candidate directory entries and listing only directories that did not exist
  at ``base``;
- `changed_ranges` gives the byte ranges (whole 64 KiB blocks, the last one cut
  at the file's size) whose content differs: captured blocks whose bytes
  differ, plus every block holding bytes beyond the old size. Blocks that were
  not captured are unchanged, whatever their size: appends and new files cost
  no pre-image, and are exactly the bytes beyond the old size.

Nothing here reads an unchanged file or lists an unchanged directory.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from shadowfs import format as fmt
from shadowfs.diffarea import DiffArea, DiffAreaError
from shadowfs.format import BLOCK_SIZE, AttrRecord, DirentRecord
from shadowfs.media.records import KIND_OF_FMT
from shadowfs.safefs import join
from shadowfs.snaptree import Meta, SourceTree
from shadowfs.snapview import SnapshotView


class SnapshotReader(Protocol):
    """One snapshot of one volume, by inode (diff-area identity) and path, whichever the reader uses."""

    def lookup(self, dir_ino: int, dir_path: str, name: str) -> tuple[int, int] | None:
        """(inode, S_IFMT) of entry `name` of a directory, or None."""

    def listdir(self, dir_ino: int, dir_path: str) -> list[tuple[str, int, int]]:
        """(name, inode, S_IFMT) of every entry of a directory."""

    def meta(self, ino: int, path: str) -> Meta | None:
        """The object's metadata (xattrs included), or None if it is not there."""

    def read(self, ino: int, path: str, offset: int, length: int) -> bytes:
        """Bytes of a regular file (short only at its end)."""


class PathReader:
    """A snapshot as a directory tree (the snapshot browser, or a quiet backing directory)."""

    def __init__(self, tree: SourceTree) -> None:
        self.tree = tree

    def lookup(self, dir_ino: int, dir_path: str, name: str) -> tuple[int, int] | None:
        return self.tree.lookup(dir_path, name)

    def listdir(self, dir_ino: int, dir_path: str) -> list[tuple[str, int, int]]:
        return self.tree.listdir(dir_path)

    def meta(self, ino: int, path: str) -> Meta | None:
        return self.tree.meta(path)

    def read(self, ino: int, path: str, offset: int, length: int) -> bytes:
        fd = self.tree.open_file(path)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)


class ViewReader:
    """A snapshot through the read model (`SnapshotView`), by inode; paths are ignored."""

    def __init__(self, view: SnapshotView) -> None:
        self.view = view

    def lookup(self, dir_ino: int, dir_path: str, name: str) -> tuple[int, int] | None:
        try:
            entry = self.view.lookup(dir_ino, os.fsencode(name))
        except FileNotFoundError:
            return None
        return entry.ino, stat.S_IFMT(self.view.attr(entry.ino).mode)

    def listdir(self, dir_ino: int, dir_path: str) -> list[tuple[str, int, int]]:
        return [(os.fsdecode(name), entry.ino, stat.S_IFMT(self.view.attr(entry.ino).mode))
                for name, entry in self.view.listdir(dir_ino)]

    def meta(self, ino: int, path: str) -> Meta | None:
        try:
            record = self.view.attr(ino, with_xattrs=True)
        except FileNotFoundError:
            return None
        return Meta(KIND_OF_FMT[stat.S_IFMT(record.mode)], record.mode, record.uid, record.gid,
                    0 if record.is_dir else record.size, record.atime_ns, record.mtime_ns, record.ctime_ns,
                    record.nlink, record.rdev, ino, {os.fsdecode(k): v for k, v in record.xattrs.items()},
                    os.fsdecode(record.symlink_target) if record.is_symlink else None)

    def read(self, ino: int, path: str, offset: int, length: int) -> bytes:
        size = self.view.attr(ino).size
        return self.view.read(ino, offset, length, size)


# ---- candidates from the diff area --------------------------------------------------------------


@dataclass
class InodeDelta:
    """An inode with a pre-image in [base, new): its attributes at base (when those were captured)
    and the data blocks captured."""

    attrs_before: AttrRecord | None = None
    blocks: set[int] = field(default_factory=set)

    @property
    def born_after_base(self) -> bool:
        return self.attrs_before is not None and not self.attrs_before.exists


@dataclass
class ObjectChanges:
    """Every object with a pre-image keyed in [base, new), with its value at base."""

    area: DiffArea
    base: int
    new: int
    inodes: dict[int, InodeDelta] = field(default_factory=dict)
    entries: dict[tuple[int, str], DirentRecord] = field(default_factory=dict)

    def block_at_base(self, ino: int, block: int) -> bytes | None:
        """The block's pre-image as snapshot `base` sees it (DiffAreaError if `base` is gone: a later
        pre-image could then be mistaken for it)."""
        with self.area.read() as txn:
            if self.area.snapshot(txn, self.base) is None:
                raise DiffAreaError(f"{self.area.path}: base snapshot {self.base} was deleted meanwhile")
            return self.area.block_at(txn, ino, block, self.base)

    def prefetch(self, inos: Iterable[int]) -> None:
        """Start reading the base pre-images of the captured blocks of `inos` (see `block_at_base`)."""
        with self.area.read() as txn:
            for ino in inos:
                delta = self.inodes.get(ino)
                if delta is None or not delta.blocks:
                    continue
                for ref in self.area.block_refs(txn, ino, sorted(delta.blocks), self.base).values():
                    if ref.offset is not None:
                        self.area.blocks.will_need(ref.offset, ref.length)

    def entry_names(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for dir_ino, name in self.entries:
            out.setdefault(dir_ino, []).append(name)
        return out


def scan(area: DiffArea, base: int, new: int) -> ObjectChanges:
    """The candidates between snapshots `base` and `new` (both must exist, base < new)."""
    with area.read() as txn:
        for seq in (base, new):
            if area.snapshot(txn, seq) is None:
                raise DiffAreaError(f"{area.path}: no snapshot with sequence {seq}")
        if base >= new:
            raise DiffAreaError(f"base snapshot {base} is not older than {new}")
        changes = ObjectChanges(area, base, new)
        attr_inos: set[int] = set()
        cursor = txn.cursor(db=area.bysnap)
        found = cursor.set_range(fmt.u64(base))
        while found:
            seq, obj = fmt.split_bysnap_key(cursor.key())
            if seq >= new:
                break
            tag = obj[:1]
            if tag == b"A":
                attr_inos.add(fmt.read_u64(obj, 1))
            elif tag == b"B":
                delta = changes.inodes.setdefault(fmt.read_u64(obj, 1), InodeDelta())
                delta.blocks.add(fmt.block_number(obj))
            elif tag == b"D":
                key = (fmt.read_u64(obj, 1), os.fsdecode(fmt.dirent_name(obj)))
                if key not in changes.entries:
                    record = area.dirent_at(txn, key[0], fmt.dirent_name(obj), base)
                    assert record is not None  # the key just seen is >= base
                    changes.entries[key] = record
            found = cursor.next()
        for ino in attr_inos:
            delta = changes.inodes.setdefault(ino, InodeDelta())
            delta.attrs_before = area.attr_at(txn, ino, base)
    return changes


# ---- trees ---------------------------------------------------------------------------------------


@dataclass
class Tree:
    """Directory structure: directory inode -> name -> (inode, S_IFMT)."""

    root: int
    children: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def walk(self) -> Iterable[tuple[str, int, int, int]]:
        """(path, inode, S_IFMT, parent inode) of every object but the root, parents first, names sorted."""
        stack: list[tuple[int, str]] = [(self.root, "")]
        while stack:
            dir_ino, dir_path = stack.pop()
            kids = self.children.get(dir_ino, {})
            for name in sorted(kids, reverse=True):
                ino, kind = kids[name]
                path = join(dir_path, name)
                yield path, ino, kind, dir_ino
                if kind == stat.S_IFDIR:
                    stack.append((ino, path))

    def paths(self) -> dict[int, list[str]]:
        """inode -> every path of it (the root is "")."""
        out: dict[int, list[str]] = {self.root: [""]}
        for path, ino, _, _ in self.walk():
            known = out.get(ino)
            if known is None:
                out[ino] = [path]
            else:
                known.append(path)
                known.sort(key=lambda p: p.split("/"))
        return out

    def index(self) -> tuple[dict[str, tuple[int, int]], dict[int, list[str]]]:
        """`path_map` and `paths` in one walk."""
        by_path: dict[str, tuple[int, int]] = {"": (self.root, stat.S_IFDIR)}
        by_ino: dict[int, list[str]] = {self.root: [""]}
        for path, ino, kind, _ in self.walk():
            by_path[path] = (ino, kind)
            known = by_ino.get(ino)
            if known is None:
                by_ino[ino] = [path]
            else:
                known.append(path)
                known.sort(key=lambda p: p.split("/"))
        return by_path, by_ino

    def path_map(self) -> dict[str, tuple[int, int]]:
        """path -> (inode, S_IFMT), the root included."""
        out = {"": (self.root, stat.S_IFDIR)}
        for path, ino, kind, _ in self.walk():
            out[path] = (ino, kind)
        return out

    def links(self) -> dict[int, set[tuple[int, str]]]:
        """inode -> its directory entries (parent inode, name)."""
        out: dict[int, set[tuple[int, str]]] = {}
        for path, ino, _, parent in self.walk():
            out.setdefault(ino, set()).add((parent, path.rsplit("/", 1)[-1]))
        return out


def tree_from_paths(items: Iterable[tuple[str, int, int]]) -> Tree:
    """A tree from (path, inode, S_IFMT) of every object, parents before children, root ("") first."""
    ino_of: dict[str, int] = {}
    tree: Tree | None = None
    for path, ino, kind in items:
        ino_of[path] = ino
        if path == "":
            tree = Tree(ino)
            tree.children[ino] = {}
            continue
        if tree is None:
            raise ValueError("the root must come first")
        parent, _, name = path.rpartition("/")
        tree.children.setdefault(ino_of[parent], {})[name] = (ino, kind)
        if kind == stat.S_IFDIR:
            tree.children.setdefault(ino, {})
    if tree is None:
        raise ValueError("no root")
    return tree


def tree_from_map(by_path: dict[str, tuple[int, int]]) -> Tree:
    """A tree from path -> (inode, S_IFMT) of every object (the root is "")."""
    tree = Tree(by_path[""][0])
    children = tree.children
    children[tree.root] = {}
    for path, (ino, kind) in by_path.items():
        if not path:
            continue
        parent, _, name = path.rpartition("/")
        parent_ino = by_path[parent][0]
        kids = children.get(parent_ino)
        if kids is None:
            kids = children[parent_ino] = {}
        kids[name] = (ino, kind)
        if kind == stat.S_IFDIR and ino not in children:
            children[ino] = {}
    return tree


def walk_tree(reader: SnapshotReader, root: int) -> Tree:
    """The whole directory structure of a snapshot (every directory listed once)."""
    tree = Tree(root)
    queue: deque[tuple[int, str]] = deque([(root, "")])
    while queue:
        dir_ino, dir_path = queue.popleft()
        kids = {name: (ino, kind) for name, ino, kind in reader.listdir(dir_ino, dir_path)}
        tree.children[dir_ino] = kids
        for name, (ino, kind) in sorted(kids.items()):
            if kind == stat.S_IFDIR and ino not in tree.children:
                queue.append((ino, join(dir_path, name)))
    return tree


def tree_at_new(base: Tree, changes: ObjectChanges, reader: SnapshotReader) -> Tree:
    """The tree at `changes.new`, from the tree at `changes.base`: only candidate entries are looked
    up, only directories unknown at base are listed."""
    names = changes.entry_names()
    tree = Tree(base.root)
    queue: deque[tuple[int, str]] = deque([(base.root, "")])
    while queue:
        dir_ino, dir_path = queue.popleft()
        if dir_ino in tree.children:
            continue
        delta = changes.inodes.get(dir_ino)
        known = dir_ino in base.children and not (delta is not None and delta.born_after_base)
        if known:
            kids = dict(base.children[dir_ino])
            for name in names.get(dir_ino, ()):
                value = reader.lookup(dir_ino, dir_path, name)
                if value is None:
                    kids.pop(name, None)
                else:
                    kids[name] = value
        else:
            kids = {name: (ino, kind) for name, ino, kind in reader.listdir(dir_ino, dir_path)}
        tree.children[dir_ino] = kids
        for name, (ino, kind) in sorted(kids.items()):
            if kind == stat.S_IFDIR:
                queue.append((ino, join(dir_path, name)))
    return tree


# ---- data ----------------------------------------------------------------------------------------


def changed_blocks(changes: ObjectChanges, ino: int, size_before: int, size_after: int,
                   read_after: Callable[[int, int], bytes]) -> list[int]:
    """Blocks (below size_after) whose bytes at new differ from base, or that hold bytes past size_before."""
    delta = changes.inodes.get(ino)
    captured = sorted(delta.blocks) if delta is not None else []
    out: set[int] = set()
    for block in captured:
        start = block * BLOCK_SIZE
        end = min(start + BLOCK_SIZE, size_after)
        if start >= end:
            continue
        if end > size_before:
            out.add(block)
            continue
        before = changes.block_at_base(ino, block) or b""
        before = before[:end - start].ljust(end - start, b"\0")
        if read_after(start, end - start).ljust(end - start, b"\0") != before:
            out.add(block)
    if size_after > size_before:
        out.update(range(size_before // BLOCK_SIZE, (size_after + BLOCK_SIZE - 1) // BLOCK_SIZE))
    return sorted(b for b in out if b * BLOCK_SIZE < size_after)


def blocks_to_ranges(blocks: Iterable[int], size: int) -> list[tuple[int, int]]:
    """Merge block numbers into (offset, length) byte ranges cut at `size`."""
    ranges: list[tuple[int, int]] = []
    for block in sorted(blocks):
        start = block * BLOCK_SIZE
        end = min(start + BLOCK_SIZE, size)
        if start >= end:
            continue
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
        else:
            ranges.append((start, end - start))
    return ranges


def changed_ranges(changes: ObjectChanges, ino: int, size_before: int, size_after: int,
                   read_after: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """`changed_blocks` as byte ranges."""
    return blocks_to_ranges(changed_blocks(changes, ino, size_before, size_after, read_after), size_after)


__all__ = ["InodeDelta", "ObjectChanges", "PathReader", "SnapshotReader", "Tree", "ViewReader",
           "blocks_to_ranges", "changed_blocks", "changed_ranges", "scan", "tree_at_new",
           "tree_from_map", "tree_from_paths", "walk_tree"]
