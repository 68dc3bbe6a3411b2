"""`shadowfs blame`: the recorded changes of one path across a volume's snapshots, with their authors.

One job: answer "who changed this, and when?" from the diff area (design
§3.14). A path names objects: at each snapshot and now, an inode, the
directory entry that names it and, for a directory, the directory's entries.
`resolve` finds them by looking the path up in each tree (the snapshots in the
browser, the live mount); `changes` lists every pre-image those objects have.
Each pre-image is the first change of its object after one snapshot (design
§3), so each listed change is one object's first change in one interval
between snapshots, with the author recorded with it:

    {"path", "object": "attributes" | "entry" | "damage", "seq", "since", "until",
     "ino" (attributes, damage), "before" ("nonexistent" for an object born in that
     interval; for an entry what it named before: a kind or "absent"),
     "data": true (its bytes changed too), "who": {...} (when recorded),
     "cause", "found" (damage: it changed while protection had lapsed; nobody is known)}

``since`` is the snapshot after which the change was made (the newest
remaining one at or before the pre-image's sequence: after a deletion a
pre-image stands for the interval it now lies in), ``until`` the next one, or
"live". Changes are listed oldest first; within an interval by time.

Invariants:
- Reads only: one read transaction of the diff area, and lstat of the path in
  each tree (never its contents).
- Inode numbers of both trees are masked to 32 bits (`snapshot.tree.INO_MASK`):
  the browser's node ids carry the backing inode in their low bits; the live
  mount's root is inode 1, which stands for the backing root.
- A change whose author was not recorded (made before this shadowfs recorded
  authors, or of an object born in a directory made in the same interval) is
  listed without ``who``.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shadowfs.diffarea import provenance, schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import KIND_OF_FMT, AuthorRecord, BackingIno, Seq
from shadowfs.linux.confined import join
from shadowfs.snapshot.tree import INO_MASK

_ROOT = 1  # the live mount's root inode (pyfuse3.ROOT_INODE)


@dataclass
class Subjects:
    """The objects a path named at some instant, each with the path its changes are listed under."""

    inos: dict[BackingIno, str] = field(default_factory=dict)
    entries: dict[tuple[BackingIno, bytes], str] = field(default_factory=dict)  # (directory, name)
    dirs: dict[BackingIno, str] = field(default_factory=dict)  # directories: their entries are listed too


def _lookup(root: str, rel: str, root_ino: BackingIno) -> tuple[BackingIno, bool] | None:
    """(inode, is a directory) of `rel` under `root`, or None if it names nothing there."""
    try:
        st = os.lstat(os.path.join(root, rel) if rel else root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    ino = st.st_ino & INO_MASK
    return (root_ino if not rel or ino == _ROOT else BackingIno(ino)), stat.S_ISDIR(st.st_mode)


def resolve(rel: str, roots: Iterable[str], root_ino: BackingIno) -> Subjects:
    """What `rel` (relative to the volume's root, "" for the root) names under each of `roots` (the
    volume's snapshots in the browser, its live mount); `root_ino` is the volume's backing root."""
    subjects = Subjects()
    parent_rel, _, name = rel.rpartition("/")
    for root in roots:
        found = _lookup(root, rel, root_ino)
        if found is None:
            continue
        ino, is_dir = found
        subjects.inos.setdefault(ino, rel)
        if is_dir:
            subjects.dirs.setdefault(ino, rel)
        if rel:
            parent = _lookup(root, parent_rel, root_ino)
            if parent is not None:
                subjects.entries.setdefault((parent[0], os.fsencode(name)), rel)
    return subjects


class _Intervals:
    """Which remaining snapshots a pre-image's sequence lies between."""

    def __init__(self, snapshots: dict[Seq, str]) -> None:
        self.ids = snapshots
        self.seqs = sorted(snapshots)

    def around(self, seq: Seq) -> tuple[Seq, str] | None:
        """(since, until id or "live") of a change stored under `seq`; None before every snapshot."""
        at = bisect.bisect_right(self.seqs, seq)
        if at == 0:
            return None
        return self.seqs[at - 1], self.ids[self.seqs[at]] if at < len(self.seqs) else "live"


def changes(area: DiffArea, subjects: Subjects, since: Seq | None = None) -> list[dict[str, Any]]:
    """Every recorded change of `subjects`, oldest first; with `since`, only those made after
    that snapshot."""
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    with area.read() as txn:
        intervals = _Intervals({record.seq: record.snapshot_id for record in area.snapshot_list(txn)})

        def add(item: dict[str, Any], seq: Seq, author: AuthorRecord | None) -> None:
            place = intervals.around(seq)
            if place is None or (since is not None and seq < since):
                return
            item.update(seq=seq, since=intervals.ids[place[0]], until=place[1])
            if author is not None:
                item["who"] = provenance.author_fields(author)
            when = 0 if author is None else author.time_ns
            out.append(((place[0], when, item["path"], item["object"]), item))

        for ino, path in subjects.inos.items():
            for record in provenance.attr_history(area, txn, ino):
                item: dict[str, Any] = {"path": path, "object": "attributes", "ino": ino}
                if not schema.decode_attr(record.value).exists:
                    item["before"] = "nonexistent"
                elif provenance.data_captured(area, txn, ino, record.seq):
                    item["data"] = True
                add(item, record.seq, record.author)
            value = txn.get(schema.u64(ino), db=area.damage)
            if value is not None:  # changed without a pre-image while protection had lapsed
                mark = schema.decode_damage(ino, value)
                add({"path": path, "object": "damage", "ino": ino, "cause": mark.cause, "found": mark.found},
                    mark.seq, None)

        def add_entry(path: str, record: provenance.Recorded) -> None:
            add({"path": path, "object": "entry", "before": _named(schema.decode_dirent(record.value))},
                record.seq, record.author)

        listed: set[tuple[BackingIno, bytes]] = set()
        for dir_ino, path in subjects.dirs.items():  # every entry of a directory, in one walk
            for record in provenance.history(area, txn, schema.dirents_prefix(dir_ino)):
                name = schema.dirent_name(record.obj)
                listed.add((dir_ino, name))
                add_entry(join(path, os.fsdecode(name)), record)
        for (dir_ino, name), path in subjects.entries.items():
            if (dir_ino, name) not in listed:
                for record in provenance.history(area, txn, schema.dirent_object(dir_ino, name)):
                    add_entry(path, record)
    born_with_entry = {(item["path"], item["seq"]) for _, item in out if item["object"] == "entry"}
    return [item for _, item in sorted(out, key=lambda pair: pair[0])
            if item.get("before") != "nonexistent" or (item["path"], item["seq"]) not in born_with_entry]


def _named(record: schema.DirentRecord) -> str:
    """What an entry named before the change: the kind of its object, or "absent"."""
    return KIND_OF_FMT.get(record.kind << 12, "file") if record.present else "absent"
