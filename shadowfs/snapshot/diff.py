"""`shadowfs diff`: what changed between two snapshots of one volume, path by path.

One job: turn the diff area's candidates (`changes.scan`) into a list a person
or a script can read. The older snapshot's directory structure is listed
(names only, never file contents); the newer one's is derived from it with
`changes.tree_at_new`; only candidate objects are examined. Each item:

    {"path", "kind", "change": "created" | "deleted" | "renamed" | "linked" | "unlinked" | "modified",
     "from": old path (renamed), "attributes": [changed fields], "size": [before, after],
     "data": [[offset, length], ...] (changed byte ranges, 64 KiB blocks),
     "who": {"uid", "gid", "pid", "comm", "op", "time"}, "modified_by": {...}}

An object is *renamed* when it lost exactly one directory entry and gained
exactly one (a move of a directory is one rename: what lies below it keeps its
entries); with hard links, gained and lost entries are *linked* and
*unlinked*. Attribute and data changes of a surviving object are attached to
the item of its first path (a ``modified`` item when its entries did not
change). Attributes compared: mode, uid, gid, size, mtime, ctime, nlink, rdev,
xattrs, symlink target (not atime, which reads change without a capture).

``who`` (design §3.14), when the scan read authors and the change was
recorded: for a deleted, renamed or unlinked path who first changed that
entry after A (a rename: the old name's), for a created or linked one who
made the entry's last recorded change (the one that made the name), for a
modified one who first changed the object's attributes or data;
``modified_by`` on an entry change whose object's attributes or data were
first changed by someone else.
Absent when not known: changes made before this was recorded, or in a
directory made since A (its entries have no pre-images).
"""

from __future__ import annotations

import functools
import stat
from collections.abc import Callable
from typing import Any

from shadowfs.diffarea.provenance import author_fields
from shadowfs.diffarea.schema import KIND_OF_FMT, AuthorRecord, BackingIno
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


def _item(path: str, kind: str, change: str, *authors: AuthorRecord | None) -> dict[str, Any]:
    """One item, with the first author of `authors` that is known as its "who"."""
    item: dict[str, Any] = {"path": path, "kind": kind, "change": change}
    who = next((author for author in authors if author is not None), None)
    if who is not None:
        item["who"] = author_fields(who)
    return item


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
    entry_author, attr_author = changes.entry_author, changes.attr_author
    for ino in sorted(set(paths_a) | set(paths_b)):
        old, new = entries_a.get(ino, {}), entries_b.get(ino, {})
        if ino not in paths_b:
            out += [_item(path, kinds_a[ino], "deleted", entry_author(*entry), attr_author(ino))
                    for entry, path in old.items()]
            continue
        if ino not in paths_a:
            out += [_item(path, kinds_b[ino], "created", entry_author(*entry, last=True), attr_author(ino))
                    for entry, path in new.items()]
            continue
        kind = kinds_b[ino]
        mine: dict[str, dict[str, Any]] = {}
        lost, gained = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        if len(lost) == 1 and len(gained) == 1:
            item = _item(new[gained[0]], kind, "renamed", entry_author(*lost[0]), entry_author(*gained[0]),
                         attr_author(ino))
            mine[item["path"]] = {**item, "from": old[lost[0]]}
        else:
            out += [_item(old[e], kind, "unlinked", entry_author(*e), attr_author(ino)) for e in lost]
            for entry in gained:
                mine[new[entry]] = _item(new[entry], kind, "linked", entry_author(*entry, last=True),
                                         attr_author(ino))
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
                    item = mine.setdefault(first_b, _item(first_b, kind, "modified", attr_author(ino)))
                    item.update(detail)
                    author = attr_author(ino)
                    if item["change"] != "modified" and author is not None:
                        modified_by = author_fields(author)
                        if modified_by != item.get("who"):
                            item["modified_by"] = modified_by
        out += list(mine.values())
    out.sort(key=lambda item: (item["path"].split("/"), item["change"]))
    return out
