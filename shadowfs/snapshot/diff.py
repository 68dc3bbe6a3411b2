"""`shadowfs diff`: what changed between two snapshots of one volume, path by path.

One job: turn the diff area's candidates (`changes.scan`) into a list a person
or a script can read. The older snapshot's directory structure is listed
(names only, never file contents); the newer one's is derived from it with
`changes.tree_at_new`; only candidate objects are examined. Each item:

    {"path", "kind", "change": "created" | "deleted" | "renamed" | "linked" | "unlinked" | "modified",
     "from": old path (renamed), "attributes": [changed fields], "size": [before, after],
     "data": [[offset, length], ...] (changed byte ranges, 64 KiB blocks)}

An object is *renamed* when it lost exactly one directory entry and gained
exactly one (a move of a directory is one rename: what lies below it keeps its
entries); with hard links, gained and lost entries are *linked* and
*unlinked*. Attribute and data changes of a surviving object are attached to
the item of its first path (a ``modified`` item when its entries did not
change). Attributes compared: mode, uid, gid, size, mtime, ctime, nlink, rdev,
xattrs, symlink target (not atime, which reads change without a capture).
"""

from __future__ import annotations

import functools
import stat
from collections.abc import Callable
from typing import Any

from shadowfs.diffarea.schema import KIND_OF_FMT, BackingIno
from shadowfs.snapshot.changes import ObjectChanges, Tree, changed_ranges, tree_at_new, walk_tree
from shadowfs.snapshot.readers import SnapshotReader
from shadowfs.snapshot.tree import Meta

ATTRIBUTES = ("mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "nlink", "rdev", "xattrs", "target")


def attribute_changes(before: Meta, after: Meta) -> list[str]:
    return [name for name in ATTRIBUTES if getattr(before, name) != getattr(after, name)]


def _entry_paths(tree: Tree) -> dict[BackingIno, dict[tuple[BackingIno, str], str]]:
    out: dict[BackingIno, dict[tuple[BackingIno, str], str]] = {}
    for path, ino, _, parent in tree.walk():
        out.setdefault(ino, {})[(parent, path.rsplit("/", 1)[-1])] = path
    return out


def _kinds(tree: Tree) -> dict[BackingIno, str]:
    out = {tree.root: "dir"}
    for _, ino, kind, _ in tree.walk():
        out[ino] = KIND_OF_FMT.get(kind, "file")
    return out


def diff_snapshots(changes: ObjectChanges, reader_a: SnapshotReader, reader_b: SnapshotReader,
                   root: BackingIno, tree_a: Tree | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every change from snapshot `changes.base` (reader_a) to `changes.new` (reader_b), sorted by path.
    `progress` follows the walk of snapshot A's tree, the part that takes time."""
    if tree_a is None:
        tree_a = walk_tree(reader_a, root, progress)
    tree_b = tree_at_new(tree_a, changes, reader_b)
    entries_a, entries_b = _entry_paths(tree_a), _entry_paths(tree_b)
    kinds_a, kinds_b = _kinds(tree_a), _kinds(tree_b)
    paths_a, paths_b = tree_a.paths(), tree_b.paths()
    out: list[dict[str, Any]] = []
    for ino in sorted(set(paths_a) | set(paths_b)):
        if ino not in paths_b:
            out += [{"path": p, "kind": kinds_a[ino], "change": "deleted"} for p in paths_a[ino]]
            continue
        if ino not in paths_a:
            out += [{"path": p, "kind": kinds_b[ino], "change": "created"} for p in paths_b[ino]]
            continue
        kind = kinds_b[ino]
        mine: dict[str, dict[str, Any]] = {}
        old, new = entries_a.get(ino, {}), entries_b.get(ino, {})
        lost, gained = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        if len(lost) == 1 and len(gained) == 1:
            mine[new[gained[0]]] = {"path": new[gained[0]], "kind": kind, "change": "renamed",
                                    "from": old[lost[0]]}
        else:
            out += [{"path": old[e], "kind": kind, "change": "unlinked"} for e in lost]
            for entry in gained:
                mine[new[entry]] = {"path": new[entry], "kind": kind, "change": "linked"}
        if ino in changes.inodes:
            first_a, first_b = paths_a[ino][0], paths_b[ino][0]
            meta_a, meta_b = reader_a.meta(ino, first_a), reader_b.meta(ino, first_b)
            if meta_a is not None and meta_b is not None:
                detail: dict[str, Any] = {}
                attrs = attribute_changes(meta_a, meta_b)
                if attrs:
                    detail["attributes"] = attrs
                if stat.S_ISREG(meta_b.mode):
                    data = changed_ranges(changes, ino, meta_a.size, meta_b.size,
                                          functools.partial(reader_b.read, ino, first_b))
                    if data:
                        detail["data"] = [list(r) for r in data]
                if meta_a.size != meta_b.size:
                    detail["size"] = [meta_a.size, meta_b.size]
                if detail:
                    item = mine.setdefault(first_b, {"path": first_b, "kind": kind, "change": "modified"})
                    item.update(detail)
        out += list(mine.values())
    out.sort(key=lambda item: (item["path"].split("/"), item["change"]))
    return out
