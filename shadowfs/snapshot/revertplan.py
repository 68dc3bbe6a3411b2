"""What a revert must change: paths of the live volume compared with one snapshot, object by object.

One job: plan `shadowfs revert` (the applier is `restore.revert`). The
*scopes* are the paths to revert (relative to the volume root; ``""`` is the
whole volume): each is read whole, from the snapshot (its tree in the
browser) and from the live volume (its live mount), and the two are compared
by identity. An inode number that names an object in both is the same object
(design §3.8: an object a snapshot sees keeps its number, in the graveyard if
need be), so a file or directory renamed since the snapshot is found at its
new place and moved back, not copied.

A tree is its objects (inode -> metadata and paths) and its directory entries:
``(parent, name) -> inode``, where the parent is a directory's inode, or, for
the entry of a scope itself, the path of the directory that holds it (outside
the scope, never changed). The live root reports FUSE inode 1 and stands for
the snapshot's root.

The plan:

- *reused*: objects of the snapshot's scopes still in the live scopes; they stay
  and are changed in place (data, owner, mode, xattrs, times) where they
  differ. Not reused, so copied from the snapshot instead: a file whose
  revert must make a hole again (a 4 KiB block of zeros in the snapshot holds
  data now: the live mount cannot punch holes, so the copy is written sparse),
  and an object that must change but also has names outside the scopes (it
  would change there too).
- *matched*: entries that are already as in the snapshot;
- *vacate*: live entries that are not, in a directory that stays; they are
  moved aside (what no snapshot entry takes back is deleted with them);
- *adds*: the snapshot's entries that are missing, parents first: a reused
  object is renamed there (or linked, for another name of a file), any other
  is made from the snapshot;
- *fixes*: what differs in each reused object.

Data is compared only where it may differ: with the diff area's candidates
(`changes.scan` from the snapshot up to now), only the blocks captured since
the snapshot, of the objects that have any; without them (the snapshot has
objects damaged by a lapse, design §9.3, so captures do not tell everything),
every block of every file. Metadata compared: type, mode, owner, size, mtime,
xattrs, symlink target. Not the atime (reading moves it; it is put back on
every object the revert changes), the ctime (it cannot be set) or the link
count (it follows the entries).

`changes` describes the plan as `shadowfs diff` items, from the live volume
to the snapshot: created, deleted, renamed (``from`` the live path), linked,
unlinked, modified (``attributes``, ``data``, ``size``: [live, snapshot]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from shadowfs.diffarea.schema import BLOCK_SIZE, BackingIno
from shadowfs.errors import RevertRefused
from shadowfs.linux.confined import split_parent
from shadowfs.snapshot.changes import ObjectChanges
from shadowfs.snapshot.tree import Meta, SourceTree

PIECE = 4096  # the unit of holes: a piece of zeros in the snapshot is a hole, as a restore makes it
COMPARED = ("mode", "uid", "gid", "size", "mtime_ns", "xattrs", "target")

DirKey = int | str  # a directory: its inode, or (the directory holding a scope) its path
Entry = tuple[DirKey, str]  # (directory, name)


def scope_paths(paths: list[str]) -> list[str]:
    """The given paths (relative to the volume root) without repeats and without paths below another
    one given: the scopes, sorted."""
    out: list[str] = []
    for path in sorted(set(paths), key=lambda p: p.split("/") if p else []):
        if not any(path == s or not s or path.startswith(s + "/") for s in out):
            out.append(path)
    return out


@dataclass
class Obj:
    """One object of a scope tree: its metadata and every path it has in the scopes."""

    meta: Meta
    paths: list[str] = field(default_factory=list)


@dataclass
class ScopeTree:
    """The objects under the scopes on one side (snapshot or live volume), read whole."""

    objects: dict[BackingIno, Obj] = field(default_factory=dict)
    entries: dict[Entry, BackingIno] = field(default_factory=dict)
    entry_of: dict[str, Entry] = field(default_factory=dict)  # path -> its entry (the volume root: none)
    order: list[tuple[str, BackingIno]] = field(default_factory=list)  # pre-order
    roots: dict[str, BackingIno | None] = field(default_factory=dict)  # scope -> object there, if any


def read_scopes(tree: SourceTree, scopes: list[str], root_ino: BackingIno | None = None) -> ScopeTree:
    """Every object under `scopes` in `tree`; `root_ino` is the identity given to the tree's root
    (the live mount's root reports inode 1)."""
    out = ScopeTree()
    for scope in scopes:
        dir_ino: dict[str, BackingIno] = {}
        out.roots[scope] = None
        for path, meta in tree.walk(scope):
            if path == "" and root_ino is not None:
                meta.ino = root_ino
            ino = meta.ino
            if path == scope:
                out.roots[scope] = ino
            if path:
                parent = split_parent(path)[0]
                entry: Entry = (parent, os.path.basename(path)) if path == scope else (dir_ino[parent],
                                                                                     os.path.basename(path))
                out.entries[entry] = ino
                out.entry_of[path] = entry
            if meta.kind == "dir":
                dir_ino[path] = ino
            known = out.objects.get(ino)
            if known is None:
                out.objects[ino] = Obj(meta, [path])
            else:
                known.paths.append(path)
            out.order.append((path, ino))
    return out


@dataclass
class DataFix:
    """How a reused regular file's bytes become the snapshot's: truncated (or extended) to `size`,
    then `writes` (offset, length) copied from the snapshot. `hole`: a piece of zeros in the
    snapshot holds data live, which only a new, sparse copy can undo."""

    size: int
    writes: list[tuple[int, int]] = field(default_factory=list)
    hole: bool = False

    @property
    def needed(self) -> bool:
        return bool(self.writes) or self.hole


@dataclass
class Fix:
    """What differs in one object that is in the snapshot and live."""

    attributes: list[str]
    data: DataFix | None = None  # regular files whose bytes or size differ

    @property
    def needed(self) -> bool:
        return bool(self.attributes) or self.data is not None


def _pread(fd: int, length: int, offset: int) -> bytes:
    out = b""
    while len(out) < length:
        chunk = os.pread(fd, length - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return out


def compare_data(snap: SourceTree, snap_path: str, live: SourceTree, live_path: str, snap_size: int,
                 live_size: int, blocks: set[int] | None) -> DataFix | None:
    """The DataFix of one file (None when its bytes are the snapshot's): `blocks` are the only
    blocks that may differ below the snapshot's size (None: any). Bytes past the live end read as
    zeros, as they will once the file is extended to the snapshot's size."""
    count = (snap_size + BLOCK_SIZE - 1) // BLOCK_SIZE
    check = range(count) if blocks is None else sorted(b for b in blocks if b < count)
    fix = DataFix(snap_size)
    if check:
        snap_fd = snap.open_file(snap_path)
        try:
            live_fd = live.open_file(live_path)
            try:
                for block in check:
                    low = block * BLOCK_SIZE
                    high = min(low + BLOCK_SIZE, snap_size)
                    theirs = _pread(snap_fd, high - low, low).ljust(high - low, b"\0")
                    ours = _pread(live_fd, high - low, low)[:max(0, live_size - low)].ljust(high - low, b"\0")
                    _compare_block(fix, low, theirs, ours)
            finally:
                os.close(live_fd)
        finally:
            os.close(snap_fd)
    return fix if fix.needed or snap_size != live_size else None


def _compare_block(fix: DataFix, offset: int, theirs: bytes, ours: bytes) -> None:
    if theirs == ours:
        return
    for low in range(0, len(theirs), PIECE):
        want, have = theirs[low:low + PIECE], ours[low:low + PIECE]
        if want == have:
            continue
        if want.count(0) == len(want):
            fix.hole = True
            continue
        start = offset + low
        if fix.writes and fix.writes[-1][0] + fix.writes[-1][1] == start:
            fix.writes[-1] = (fix.writes[-1][0], fix.writes[-1][1] + len(want))
        else:
            fix.writes.append((start, len(want)))


def compare_meta(snap: Meta, live: Meta) -> list[str]:
    """The metadata fields (of `COMPARED`) that differ; ``size`` for files only."""
    out = []
    for name in COMPARED:
        if name == "size" and snap.kind != "file":
            continue
        if getattr(snap, name) != getattr(live, name):
            out.append(name)
    return out


@dataclass
class RevertPlan:
    """See the module docstring."""

    scopes: list[str]
    root_ino: BackingIno  # the volume root's (the live root stands for it)
    snap: ScopeTree
    live: ScopeTree  # stand-ins under the identity of the snapshot object they stand in for
    stand_ins: set[BackingIno] = field(default_factory=set)
    reused: set[BackingIno] = field(default_factory=set)
    fixes: dict[BackingIno, Fix] = field(default_factory=dict)
    matched: set[Entry] = field(default_factory=set)
    vacate: list[Entry] = field(default_factory=list)
    adds: list[tuple[str, Entry, BackingIno]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.vacate or self.adds or self.fixes)


def plan_revert(snap: SourceTree, live: SourceTree, scopes: list[str],
                candidates: ObjectChanges | None) -> RevertPlan:
    """The plan that makes `scopes` of the live tree `live` what they are in the snapshot tree `snap`.
    `candidates`: the objects changed since the snapshot (`changes.scan` up to now), or None to
    compare every object. RevertRefused when a scope is in neither tree, or when the directory
    that must hold it is not there live."""
    scopes = scope_paths(scopes)
    root = snap.meta("")
    if root is None:
        raise RevertRefused(f"the snapshot at {snap.root} cannot be read")
    s_tree = read_scopes(snap, scopes)
    l_tree = read_scopes(live, scopes, root.ino)
    for scope in scopes:
        if s_tree.roots[scope] is None and l_tree.roots[scope] is None:
            raise RevertRefused(f"{scope}: neither in the snapshot nor in the volume")
        if scope and s_tree.roots[scope] is not None:
            holder = live.meta(split_parent(scope)[0])
            if holder is None or holder.kind != "dir":
                raise RevertRefused(f"{scope}: the directory that held it is not in the volume any more "
                                    f"(removed or renamed since): revert that directory instead")
    stand_ins = _stand_ins(s_tree, l_tree)
    if stand_ins:
        l_tree = _rekey(l_tree, stand_ins)
    plan = RevertPlan(scopes, root.ino, s_tree, l_tree, set(stand_ins.values()))
    _choose_reused(plan, snap, live, candidates)
    reused = plan.reused
    plan.matched = {e for e, ino in s_tree.entries.items() if l_tree.entries.get(e) == ino and ino in reused}
    plan.vacate = [e for path, e in l_tree.entry_of.items()
                   if e not in plan.matched and (isinstance(e[0], str) or e[0] in reused)]
    plan.adds = [(path, s_tree.entry_of[path], ino) for path, ino in s_tree.order
                 if path in s_tree.entry_of and s_tree.entry_of[path] not in plan.matched]
    plan.changes = _describe(plan)
    return plan


def _stand_ins(s_tree: ScopeTree, l_tree: ScopeTree) -> dict[BackingIno, BackingIno]:
    """Live objects that stand in for snapshot objects gone from the scopes: live inode -> snapshot
    inode. An object of the snapshot that is nowhere in the live scopes (deleted, or copied back by
    an earlier revert) is stood in for by the object at its path, if that one is not itself an
    object of the snapshot and can become it in place: same type, and for a symlink the same target,
    for a device node the same device number."""
    out: dict[BackingIno, BackingIno] = {}
    live_at = dict(l_tree.order)
    for path, ino in s_tree.order:
        theirs = s_tree.objects[ino]
        if ino in l_tree.objects or ino in out.values() or theirs.paths[0] != path:
            continue
        found = live_at.get(path)
        if found is None or found in s_tree.objects or found in out:
            continue
        ours = l_tree.objects[found].meta
        device = ours.kind in ("chr", "blk")
        if (ours.kind, ours.target, ours.rdev if device else 0) == \
                (theirs.meta.kind, theirs.meta.target, theirs.meta.rdev if device else 0):
            out[found] = ino
    return out


def _rekey(tree: ScopeTree, alias: dict[BackingIno, BackingIno]) -> ScopeTree:
    """`tree` with the objects of `alias` under their new identity (their `meta.ino` stays the real one)."""

    def ino_key(value: BackingIno) -> BackingIno:
        return alias.get(value, value)

    def key(value: DirKey) -> DirKey:
        return value if isinstance(value, str) else ino_key(BackingIno(value))

    out = ScopeTree(roots={scope: None if ino is None else ino_key(ino) for scope, ino in tree.roots.items()})
    for path, ino in tree.order:
        new = ino_key(ino)
        out.order.append((path, new))
        entry = tree.entry_of.get(path)
        if entry is not None:
            moved: Entry = (key(entry[0]), entry[1])
            out.entry_of[path] = moved
            out.entries[moved] = new
        out.objects[new] = tree.objects[ino]
    return out


def _choose_reused(plan: RevertPlan, snap: SourceTree, live: SourceTree,
                   candidates: ObjectChanges | None) -> None:
    for ino in plan.snap.objects.keys() & plan.live.objects.keys():
        theirs, ours = plan.snap.objects[ino], plan.live.objects[ino]
        if theirs.meta.kind != ours.meta.kind:
            continue  # cannot happen while the snapshot exists (§3.8); copied if it does
        fix = Fix(compare_meta(theirs.meta, ours.meta))
        if theirs.meta.kind == "file":
            known = candidates is not None and ino not in plan.stand_ins  # the captures say what changed
            delta = candidates.inodes.get(ino) if candidates is not None and known else None
            if not known or delta is not None or "size" in fix.attributes:
                blocks = None if not known else (delta.blocks if delta is not None else set())
                fix.data = compare_data(snap, theirs.paths[0], live, ours.paths[0], theirs.meta.size,
                                        ours.meta.size, blocks)
        elsewhere = ours.meta.kind != "dir" and ours.meta.nlink > len(ours.paths)
        if fix.data is not None and fix.data.hole or elsewhere and fix.needed:
            plan.fixes[ino] = fix  # described as modified; made as a copy
            continue
        plan.reused.add(ino)
        if fix.needed:
            plan.fixes[ino] = fix


def _describe(plan: RevertPlan) -> list[dict[str, Any]]:
    s_tree, l_tree = plan.snap, plan.live
    out: list[dict[str, Any]] = []
    for ino in sorted(s_tree.objects.keys() | l_tree.objects.keys()):
        theirs, ours = s_tree.objects.get(ino), l_tree.objects.get(ino)
        if ours is None:
            assert theirs is not None
            out += [{"path": p, "kind": theirs.meta.kind, "change": "created"} for p in theirs.paths]
            continue
        if theirs is None:
            out += [{"path": p, "kind": ours.meta.kind, "change": "deleted"} for p in ours.paths]
            continue
        kind = theirs.meta.kind
        want = {s_tree.entry_of[p]: p for p in theirs.paths if p in s_tree.entry_of}
        have = {l_tree.entry_of[p]: p for p in ours.paths if p in l_tree.entry_of}
        lost, gained = sorted(set(have) - set(want), key=str), sorted(set(want) - set(have), key=str)
        mine: dict[str, dict[str, Any]] = {}
        if len(lost) == 1 and len(gained) == 1:
            mine[want[gained[0]]] = {"path": want[gained[0]], "kind": kind, "change": "renamed",
                                     "from": have[lost[0]]}
        else:
            out += [{"path": have[e], "kind": kind, "change": "unlinked"} for e in lost]
            mine.update({want[e]: {"path": want[e], "kind": kind, "change": "linked"} for e in gained})
        fix = plan.fixes.get(ino)
        if fix is not None:
            first = theirs.paths[0]
            item = mine.setdefault(first, {"path": first, "kind": kind, "change": "modified"})
            if fix.attributes:
                item["attributes"] = fix.attributes
            if fix.data is not None:
                item["data"] = True
                if theirs.meta.size != ours.meta.size:
                    item["size"] = [ours.meta.size, theirs.meta.size]
            if ino not in plan.reused:
                item["copied"] = True  # made anew from the snapshot: a new inode number
        out += list(mine.values())
    out.sort(key=lambda item: (item["path"].split("/"), item["change"]))
    return out


__all__ = ["DataFix", "DirKey", "Entry", "Fix", "RevertPlan", "ScopeTree", "compare_data", "compare_meta",
           "plan_revert", "read_scopes", "scope_paths"]
