"""What changed between two snapshots of a volume, straight from the diff area's capture keys.

One job: design §6.4. A pre-image of object ``o`` is
stored under the sequence of the newest snapshot at the moment of ``o``'s first
change after it (capture rule), and the delete rule only ever drops a key in
``[d, e)`` when an older key in ``[p, d)`` remains. So for two remaining
snapshots ``base < new``:

    o differs between base and new  =>  o has a pre-image keyed in [base, new)

and the ``bysnap`` index lists exactly those keys, in sequence order: `scan`
reads ``bysnap`` from ``base`` up to ``new`` and nothing else. Each candidate's
value at ``base`` is its pre-image with the smallest sequence ``>= base``
(which lies in ``[base, new)``); its value at ``new`` is read from the snapshot
``new`` itself through a `readers.SnapshotReader`; a candidate whose two values are
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

Asked for (`scan(..., authors=True)`, what `shadowfs diff` does), the scan
also reads who made the first change of each attribute and entry candidate
after ``base`` (design §3.14): the author record kept with the pre-image that
the read rule finds at ``base``; and for an entry changed again after a later
snapshot in between, who made its last recorded change (the one that made
the name it has at ``new``). A backup's scan reads none.

The implication holds only while every change passed the capture path: an
object marked damaged in ``base`` (design §9.3) changed without a pre-image,
so `scan` refuses such a pair (DiffAreaError; a backup then compares every
file's metadata instead).

Every inode here is a `BackingIno` (the diff-area identity; readers hand them
out typed) and the two snapshots are `Seq`s: a tree built from anything else,
such as a backup image's records, converts its inode numbers where it reads
them.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.provenance import author_at
from shadowfs.diffarea.schema import (
    BLOCK_SIZE,
    AttrRecord,
    AuthorRecord,
    BackingIno,
    DirentRecord,
    Seq,
    blocks_to_ranges,
)
from shadowfs.linux.confined import join
from shadowfs.snapshot.readers import PathReader, SnapshotReader  # PathReader: for `changes.PathReader` users

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
    """Every object with a pre-image keyed in [base, new), with its value at base (`new` None:
    up to now, for a diff against the live tree)."""

    area: DiffArea
    base: Seq
    new: Seq | None
    inodes: dict[BackingIno, InodeDelta] = field(default_factory=dict)
    entries: dict[tuple[BackingIno, str], DirentRecord] = field(default_factory=dict)
    authors: dict[bytes, AuthorRecord] = field(default_factory=dict)  # object key -> its first change's
    last_authors: dict[bytes, AuthorRecord] = field(default_factory=dict)  # entries changed again later

    def attr_author(self, ino: BackingIno) -> AuthorRecord | None:
        """Who first changed the attributes (or data) of `ino` after base, if recorded and asked for."""
        return self.authors.get(schema.attr_object(ino))

    def entry_author(self, dir_ino: BackingIno, name: str, *, last: bool = False) -> AuthorRecord | None:
        """Who first changed entry `name` of `dir_ino` after base (`last`: who made its last recorded
        change before new, the one that gave it its value at new), if recorded and asked for."""
        obj = schema.dirent_object(dir_ino, os.fsencode(name))
        return (self.last_authors.get(obj) if last else None) or self.authors.get(obj)

    def block_at_base(self, ino: BackingIno, block: int) -> bytes | None:
        """The block's pre-image as snapshot `base` sees it (DiffAreaError if `base` is gone: a later
        pre-image could then be mistaken for it)."""
        with self.area.read() as txn:
            if self.area.snapshot(txn, self.base) is None:
                raise DiffAreaError(f"{self.area.path}: base snapshot {self.base} was deleted meanwhile")
            return self.area.block_at(txn, ino, block, self.base)

    def entry_names(self) -> dict[BackingIno, list[str]]:
        out: dict[BackingIno, list[str]] = {}
        for dir_ino, name in self.entries:
            out.setdefault(dir_ino, []).append(name)
        return out


def scan(area: DiffArea, base: Seq, new: Seq | None, *, authors: bool = False) -> ObjectChanges:
    """The candidates between snapshots `base` and `new` (both must exist, base < new), or with
    `new` None between `base` and now: every object changed through the live mount since; with
    `authors`, who made the first change of each attribute and entry candidate (when recorded)."""
    with area.read() as txn:
        for seq in (base, new):
            if seq is not None and area.snapshot(txn, seq) is None:
                raise DiffAreaError(f"{area.path}: no snapshot with sequence {seq}")
        if new is not None and base >= new:
            raise DiffAreaError(f"base snapshot {base} is not older than {new}")
        damaged = area.damage_count(txn, base)
        if damaged:  # changed without pre-images: the keys below would not name them
            raise DiffAreaError(f"{area.path}: {damaged} object(s) changed while protection had lapsed "
                                f"after snapshot {base}: the diff area cannot say what changed since")
        changes = ObjectChanges(area, base, new)
        attr_inos: set[BackingIno] = set()
        first: dict[bytes, Seq] = {}  # attribute and entry objects: the key the read rule finds at base
        last: dict[bytes, Seq] = {}  # entry objects: their last key before new
        cursor = txn.cursor(db=area.bysnap)
        found = cursor.set_range(schema.u64(base))
        while found:
            seq, obj = schema.split_bysnap_key(cursor.key())
            if new is not None and seq >= new:
                break
            tag = obj[:1]
            if authors and tag != b"B":
                first.setdefault(obj, seq)  # bysnap is in sequence order: the first seen is the lowest
                if tag == b"D":
                    last[obj] = seq
            if tag == b"A":
                attr_inos.add(schema.object_ino(obj))
            elif tag == b"B":
                delta = changes.inodes.setdefault(schema.object_ino(obj), InodeDelta())
                delta.blocks.add(schema.block_number(obj))
            elif tag == b"D":
                key = (schema.object_ino(obj), os.fsdecode(schema.dirent_name(obj)))
                if key not in changes.entries:
                    record = area.dirent_at(txn, key[0], schema.dirent_name(obj), base)
                    assert record is not None  # the key just seen is >= base
                    changes.entries[key] = record
            found = cursor.next()
        for ino in attr_inos:
            delta = changes.inodes.setdefault(ino, InodeDelta())
            delta.attrs_before = area.attr_at(txn, ino, base)
        for obj, seq in first.items():
            author = author_at(area, txn, obj, seq)
            if author is not None:
                changes.authors[obj] = author
        for obj, seq in last.items():
            author = author_at(area, txn, obj, seq) if seq != first[obj] else None
            if author is not None:
                changes.last_authors[obj] = author
    return changes


# ---- trees ---------------------------------------------------------------------------------------


@dataclass
class Tree:
    """Directory structure: directory inode -> name -> (inode, S_IFMT)."""

    root: BackingIno
    children: dict[BackingIno, dict[str, tuple[BackingIno, int]]] = field(default_factory=dict)
    # set by `tree_at_new`: the path of every directory reached, and the directories whose
    # entries were looked up or listed (every other one shares its entries with the base tree)
    dir_paths: dict[BackingIno, str] = field(default_factory=dict)
    touched: set[BackingIno] = field(default_factory=set)

    def walk(self) -> Iterable[tuple[str, BackingIno, int, BackingIno]]:
        """(path, inode, S_IFMT, parent inode) of every object but the root, parents first, names sorted."""
        stack: list[tuple[BackingIno, str]] = [(self.root, "")]
        while stack:
            dir_ino, dir_path = stack.pop()
            kids = self.children.get(dir_ino, {})
            for name in sorted(kids, reverse=True):
                ino, kind = kids[name]
                path = join(dir_path, name)
                yield path, ino, kind, dir_ino
                if kind == stat.S_IFDIR:
                    stack.append((ino, path))

    def paths(self) -> dict[BackingIno, list[str]]:
        """inode -> every path of it (the root is "")."""
        out: dict[BackingIno, list[str]] = {self.root: [""]}
        for path, ino, _, _ in self.walk():
            known = out.get(ino)
            if known is None:
                out[ino] = [path]
            else:
                known.append(path)
                known.sort(key=lambda p: p.split("/"))
        return out

    def index(self) -> tuple[dict[str, tuple[BackingIno, int]], dict[BackingIno, list[str]]]:
        """`path_map` and `paths` in one walk."""
        by_path: dict[str, tuple[BackingIno, int]] = {"": (self.root, stat.S_IFDIR)}
        by_ino: dict[BackingIno, list[str]] = {self.root: [""]}
        for path, ino, kind, _ in self.walk():
            by_path[path] = (ino, kind)
            known = by_ino.get(ino)
            if known is None:
                by_ino[ino] = [path]
            else:
                known.append(path)
                known.sort(key=lambda p: p.split("/"))
        return by_path, by_ino

    def path_map(self) -> dict[str, tuple[BackingIno, int]]:
        """path -> (inode, S_IFMT), the root included."""
        out = {"": (self.root, stat.S_IFDIR)}
        for path, ino, kind, _ in self.walk():
            out[path] = (ino, kind)
        return out

    def links(self) -> dict[BackingIno, set[tuple[BackingIno, str]]]:
        """inode -> its directory entries (parent inode, name)."""
        out: dict[BackingIno, set[tuple[BackingIno, str]]] = {}
        for path, ino, _, parent in self.walk():
            out.setdefault(ino, set()).add((parent, path.rsplit("/", 1)[-1]))
        return out


def tree_from_paths(items: Iterable[tuple[str, BackingIno, int]]) -> Tree:
    """A tree from (path, inode, S_IFMT) of every object, parents before children, root ("") first."""
    ino_of: dict[str, BackingIno] = {}
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


def tree_from_map(by_path: Mapping[str, tuple[BackingIno, int]]) -> Tree:
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


def walk_tree(reader: SnapshotReader, root: BackingIno,
              progress: Callable[[dict[str, Any]], None] | None = None) -> Tree:
    """The whole directory structure of a snapshot (every directory listed once); `progress` is
    told after each directory how many entries were seen (``{"files", "bytes": 0, "path"}``)."""
    tree = Tree(root)
    queue: deque[tuple[BackingIno, str]] = deque([(root, "")])
    seen = 0
    while queue:
        dir_ino, dir_path = queue.popleft()
        kids = {name: (ino, kind) for name, ino, kind in reader.listdir(dir_ino, dir_path)}
        tree.children[dir_ino] = kids
        seen += len(kids)
        if progress is not None:
            progress({"files": seen, "bytes": 0, "path": dir_path})
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
    queue: deque[tuple[BackingIno, str]] = deque([(base.root, "")])
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

    moved_in: dict[str, tuple[BackingIno, int]] = field(default_factory=dict)
    moved_out: dict[str, tuple[BackingIno, int]] = field(default_factory=dict)


def tree_delta(base: Tree, base_dirs: Mapping[BackingIno, str], new: Tree) -> TreeDelta:
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


def _subtree(tree: Tree, path: str, value: tuple[BackingIno, int],
             out: dict[str, tuple[BackingIno, int]]) -> None:
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


def changed_blocks(changes: ObjectChanges, ino: BackingIno, size_before: int, size_after: int,
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


def captured_ranges(changes: ObjectChanges, ino: BackingIno, size_before: int,
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


def changed_ranges(changes: ObjectChanges, ino: BackingIno, size_before: int, size_after: int,
                   read_after: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """`changed_blocks` as byte ranges."""
    return blocks_to_ranges(changed_blocks(changes, ino, size_before, size_after, read_after), size_after)


__all__ = ["InodeDelta", "ObjectChanges", "PathReader", "SnapshotReader", "Tree", "TreeDelta",
           "blocks_to_ranges", "captured_ranges", "changed_blocks", "changed_ranges", "scan",
           "tree_at_new", "tree_delta", "tree_from_map", "tree_from_paths", "walk_tree"]
