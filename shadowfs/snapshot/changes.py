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
  `captured_ranges` gives the same without comparing (so without reading):
  every captured block, for backups, which then read each block once.

Nothing here reads an unchanged file or lists an unchanged directory.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import BLOCK_SIZE, KIND_OF_FMT, AttrRecord, DirentRecord
from shadowfs.linux.confined import join
from shadowfs.snapshot.tree import Meta, OpenSource, PathSource, SourceTree
from shadowfs.snapshot.view import SnapshotView


class SnapshotReader(Protocol):
    """One snapshot of one volume, by inode (diff-area identity) and path, whichever the reader uses."""

    def root(self) -> int | None:
        """The inode of the volume's root directory (None if it cannot be read)."""

    def lookup(self, dir_ino: int, dir_path: str, name: str) -> tuple[int, int] | None:
        """(inode, S_IFMT) of entry `name` of a directory, or None."""

    def listdir(self, dir_ino: int, dir_path: str) -> list[tuple[str, int, int]]:
        """(name, inode, S_IFMT) of every entry of a directory."""

    def meta(self, ino: int, path: str) -> Meta | None:
        """The object's metadata (xattrs included), or None if it is not there."""

    def read(self, ino: int, path: str, offset: int, length: int) -> bytes:
        """Bytes of a regular file (short only at its end)."""

    def source(self, ino: int, path: str, size: int) -> OpenSource:
        """The bytes of a regular file whose size at the snapshot is `size`; close it after use."""

    def prefetch(self, objects: list[tuple[int, str, list[int]]]) -> None:
        """Warm what the caller reads next: (inode, path, data blocks) of each object, in order."""




class PathReader:
    """A snapshot as a directory tree (the snapshot browser, or a quiet backing directory)."""

    def __init__(self, tree: SourceTree) -> None:
        self.tree = tree

    def root(self) -> int | None:
        meta = self.tree.meta("")
        return None if meta is None else meta.ino

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

    def source(self, ino: int, path: str, size: int) -> PathSource:
        return self.tree.source(path)

    def prefetch(self, objects: list[tuple[int, str, list[int]]]) -> None:
        """Look the paths up from several threads: on a cold cache each lookup waits for the disk,
        and from threads the kernel overlaps part of those waits (measured through the snapshot
        browser: 200 changed files of 20,000, their metadata 0.18 s -> 0.10 s plus 0.03 s here).
        Only lstat: a symlink on the way can mislead a lookup but never a read."""

        def look(item: tuple[int, str, list[int]]) -> None:
            try:
                os.stat(item[1], dir_fd=self.tree.tree.root_fd, follow_symlinks=False)
            except OSError:
                pass

        _in_threads(look, objects)


class ViewReader:
    """A snapshot through the read model (`SnapshotView`), by inode; paths are ignored."""

    def __init__(self, view: SnapshotView) -> None:
        self.view = view

    def root(self) -> int | None:
        return self.view.root_ino

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

    def source(self, ino: int, path: str, size: int) -> ViewSource:
        return ViewSource(self.view, ino, size)

    def prefetch(self, objects: list[tuple[int, str, list[int]]]) -> None:
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

    def __init__(self, view: SnapshotView, ino: int, size: int) -> None:
        self.view = view
        self.ino = ino
        self.size = size
        self._kept: dict[tuple[int, int], bytes] = {}

    def pread(self, length: int, offset: int) -> bytes:
        data = self._kept.get((offset, length))
        if data is None:
            data = bytes(self.view.read_buffer(self.ino, offset, length, self.size))
            if length > self.KEEP_BYTES:
                return data
            if len(self._kept) >= self.KEEP:
                del self._kept[next(iter(self._kept))]
            self._kept[(offset, length)] = data
        return data

    def data_regions(self, size: int) -> list[tuple[int, int]]:
        return self.view.data_regions(self.ino, min(size, self.size))

    def close(self) -> None:
        self._kept.clear()


def _in_threads(work: Callable[[tuple[int, str, list[int]]], None], items: list[tuple[int, str, list[int]]],
                threads: int = 8) -> None:
    if len(items) < 2 * threads:
        return  # too few to gain from the hand-over
    from concurrent.futures import ThreadPoolExecutor  # here: an import a CLI call need not pay

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(work, items):
            pass


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
        found = cursor.set_range(schema.u64(base))
        while found:
            seq, obj = schema.split_bysnap_key(cursor.key())
            if seq >= new:
                break
            tag = obj[:1]
            if tag == b"A":
                attr_inos.add(schema.read_u64(obj, 1))
            elif tag == b"B":
                delta = changes.inodes.setdefault(schema.read_u64(obj, 1), InodeDelta())
                delta.blocks.add(schema.block_number(obj))
            elif tag == b"D":
                key = (schema.read_u64(obj, 1), os.fsdecode(schema.dirent_name(obj)))
                if key not in changes.entries:
                    record = area.dirent_at(txn, key[0], schema.dirent_name(obj), base)
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
    # set by `tree_at_new`: the path of every directory reached, and the directories whose
    # entries were looked up or listed (every other one shares its entries with the base tree)
    dir_paths: dict[int, str] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)

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
    up, only directories unknown at base are listed; a directory with neither shares its entries
    with `base` (neither tree is changed afterwards)."""
    names = changes.entry_names()
    tree = Tree(base.root)
    queue: deque[tuple[int, str]] = deque([(base.root, "")])
    while queue:
        dir_ino, dir_path = queue.popleft()
        if dir_ino in tree.children:
            continue
        tree.dir_paths[dir_ino] = dir_path
        delta = changes.inodes.get(dir_ino)
        known = dir_ino in base.children and not (delta is not None and delta.born_after_base)
        if known and dir_ino not in names:
            kids = base.children[dir_ino]
        elif known:
            tree.touched.add(dir_ino)
            kids = dict(base.children[dir_ino])
            for name in names[dir_ino]:
                value = reader.lookup(dir_ino, dir_path, name)
                if value is None:
                    kids.pop(name, None)
                else:
                    kids[name] = value
        else:
            tree.touched.add(dir_ino)
            kids = {name: (ino, kind) for name, ino, kind in reader.listdir(dir_ino, dir_path)}
        tree.children[dir_ino] = kids
        for name, (ino, kind) in sorted(kids.items()):
            if kind == stat.S_IFDIR:
                queue.append((ino, join(dir_path, name)))
    return tree


@dataclass
class TreeDelta:
    """Where a tree at new (`tree_at_new`) differs from the tree at base, as paths.

    Every path at or below a directory entry whose value changed is *moved*: `moved_in` holds
    those at new (path -> (inode, S_IFMT)), `moved_out` those at base. Every other path of
    either tree is *stable*: the same object at the same path in both. A path at new that is
    not moved in and a path at base that is not moved out are therefore the same path."""

    moved_in: dict[str, tuple[int, int]] = field(default_factory=dict)
    moved_out: dict[str, tuple[int, int]] = field(default_factory=dict)


def tree_delta(base: Tree, base_dirs: dict[int, str], new: Tree) -> TreeDelta:
    """The delta from `base` (with `base_dirs`: directory inode -> its path) to `new`, from the
    directories `tree_at_new` touched only: nothing proportional to the unchanged tree."""
    delta = TreeDelta()
    for dir_ino in new.touched:
        kids_n = new.children[dir_ino]
        kids_b = base.children.get(dir_ino, {})
        for name in kids_n.keys() | kids_b.keys():
            value_n, value_b = kids_n.get(name), kids_b.get(name)
            if value_n == value_b:
                continue
            if value_n is not None:
                _subtree(new, join(new.dir_paths[dir_ino], name), value_n, delta.moved_in)
            if value_b is not None and dir_ino in base_dirs:
                _subtree(base, join(base_dirs[dir_ino], name), value_b, delta.moved_out)
    return delta


def _subtree(tree: Tree, path: str, value: tuple[int, int], out: dict[str, tuple[int, int]]) -> None:
    """Every path at and below `path` (whose entry is `value`) into `out`; a directory is entered
    once, whatever a malformed tree says."""
    out[path] = value
    if value[1] != stat.S_IFDIR:
        return
    seen = {value[0]}
    stack = [(value[0], path)]
    while stack:
        dir_ino, dir_path = stack.pop()
        for name, kid in tree.children.get(dir_ino, {}).items():
            kid_path = join(dir_path, name)
            out[kid_path] = kid
            if kid[1] == stat.S_IFDIR and kid[0] not in seen:
                seen.add(kid[0])
                stack.append((kid[0], kid_path))


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


def captured_ranges(changes: ObjectChanges, ino: int, size_before: int,
                    size_after: int) -> list[tuple[int, int]]:
    """Byte ranges (below size_after) that may differ from base without reading anything: the
    captured blocks and the blocks past size_before. A superset of `changed_ranges` (a block
    written back with its old bytes is in it), as an incremental ZFS send sends every block
    born since the base, whatever its bytes."""
    delta = changes.inodes.get(ino)
    blocks = set(delta.blocks) if delta is not None else set()
    if size_after > size_before:
        blocks.update(range(size_before // BLOCK_SIZE, (size_after + BLOCK_SIZE - 1) // BLOCK_SIZE))
    return blocks_to_ranges(blocks, size_after)


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


__all__ = ["InodeDelta", "ObjectChanges", "PathReader", "SnapshotReader", "Tree", "TreeDelta", "ViewReader",
           "ViewSource", "blocks_to_ranges", "captured_ranges", "changed_blocks", "changed_ranges", "scan",
           "tree_at_new", "tree_delta", "tree_from_map", "tree_from_paths", "walk_tree"]
