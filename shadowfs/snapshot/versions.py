"""The versions of one path: what it was in each snapshot of its volume, then what it is now.

One job: `shadowfs versions`. The path (relative to the volume root) is
looked up in every snapshot, oldest first, as a directory tree (the
snapshot browser) and then in the live volume, never following a symlink on
the way or at its end. Each look gives one of:

- *present*: the object's type, inode number, mode, owner, size, mtime, xattrs,
  symlink target, content hash (sha256 of a regular file's bytes, holes read as
  zeros) and, for a directory, its names;
- *absent*: nothing there (or no directory on the way);
- *damaged*: the object changed while protection had lapsed (design §9.3), so the
  snapshot cannot show it (EIO).

Consecutive snapshots whose looks are equal are folded into one version that
lists every snapshot it is seen in. Equal means the same identity (inode
number: design §3.8) and the same type, mode, owner, size, mtime, device
number, xattrs, target, content and names; not the ctime, atime or link
count, which move without the object itself changing (a read, a rename of
the path, a hard link made elsewhere). The live look is always a version of
its own, the last, which says whether it equals the one before it. A
directory's version lists the names that entered and left it since the
version before (the first lists every name as entered).

Invariants:
- Nothing is written, and nothing of a snapshot is read but the one path (and a
  directory's listing): no tree walks.
- A file's bytes are hashed at most once per version: with the diff area at
  hand, a look whose identity and size equal the look before and whose blocks
  have no pre-image at or after the earlier snapshot (design §3.1: every change
  of a byte the earlier snapshot could see stores one) takes that look's hash
  without reading. Marks of §9.3 make the earlier look damaged, never this.
"""

from __future__ import annotations

import datetime
import errno
import os
from dataclasses import dataclass, field
from typing import Any

from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import BLOCK_SIZE, HIDDEN_DIR, BackingIno, Seq
from shadowfs.snapshot.tree import Meta, SourceTree, SparseReader

PRESENT = "present"
ABSENT = "absent"
DAMAGED = "damaged"


@dataclass(frozen=True)
class Source:
    """Where one look is taken: a snapshot's tree (its browser path) or the live volume (`seq` None)."""

    root: str
    seq: Seq | None
    labels: dict[str, Any]  # what a version lists of it: {"set", "snapshot", "created"}; {} for live

    @property
    def live(self) -> bool:
        return self.seq is None

    def where(self, path: str) -> str:
        """Where the object at `path` (relative to the volume root) is opened in this source."""
        return os.path.join(self.root, path) if path else self.root


@dataclass
class Look:
    """What one source shows at the path."""

    source: Source
    state: str
    meta: Meta | None = None
    sha256: str | None = None
    names: list[str] = field(default_factory=list)
    error: str | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        if self.meta is None:
            return (self.state,)
        m = self.meta
        return (self.state, m.kind, m.ino, m.mode, m.uid, m.gid, m.size, m.mtime_ns, m.rdev,
                tuple(sorted(m.xattrs.items())), m.target, self.sha256, tuple(self.names))


def _look(source: Source, path: str, before: Look | None, area: DiffArea | None) -> Look:
    hidden = [os.fsdecode(HIDDEN_DIR)] if source.live else []
    try:
        with SourceTree(source.root, hidden=hidden) as tree:
            meta = tree.meta(path)
            if meta is None:
                return Look(source, ABSENT)
            look = Look(source, PRESENT, meta)
            if meta.kind == "dir":
                look.names = [name for name, _, _ in tree.listdir(path)]
            elif meta.kind == "file":
                look.sha256 = _known_hash(meta, before, area)
                if look.sha256 is None:
                    with tree.source(path) as data:
                        reader = SparseReader(data, meta.size)
                        for _ in reader.chunks():
                            pass
                    look.sha256 = reader.sha256
            return look
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        return Look(source, DAMAGED, error=f"{exc.strerror} (changed while protection had lapsed)")


def _known_hash(meta: Meta, before: Look | None, area: DiffArea | None) -> str | None:
    """The hash of the look before, when the diff area shows these bytes did not change since."""
    if (area is None or before is None or before.meta is None or before.sha256 is None
            or before.source.seq is None or before.meta.ino != meta.ino or before.meta.size != meta.size):
        return None
    blocks = (meta.size + BLOCK_SIZE - 1) // BLOCK_SIZE
    with area.read() as txn:
        if area.snapshot(txn, before.source.seq) is None:
            return None  # deleted meanwhile: its pre-images may be gone with it
        changed = area.block_refs_range(txn, BackingIno(meta.ino), 0, blocks, before.source.seq)
    return None if changed else before.sha256


def looks(sources: list[Source], path: str, area: DiffArea | None = None) -> list[Look]:
    """The look of every source at `path` (relative to the volume root), in the order given."""
    out: list[Look] = []
    for source in sources:
        out.append(_look(source, path, out[-1] if out else None, area))
    return out


def utc(ns: int) -> str:
    """A time in nanoseconds as UTC, ISO 8601, to the nanosecond."""
    seconds, rest = divmod(ns, 10**9)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"


def _version(group: list[Look], previous: Look | None, path: str) -> dict[str, Any]:
    first = group[0]
    item: dict[str, Any] = {"state": first.state,
                            "snapshots": [dict(look.source.labels, path=look.source.where(path))
                                          for look in group if not look.source.live],
                            "path": group[-1].source.where(path)}
    if first.error is not None:
        item["error"] = first.error
    meta = first.meta
    if meta is not None:
        item.update({"type": meta.kind, "inode": meta.ino, "mode": meta.mode & 0o7777, "uid": meta.uid,
                     "gid": meta.gid, "size": meta.size, "mtime_ns": meta.mtime_ns,
                     "mtime": utc(meta.mtime_ns), "xattrs": sorted(meta.xattrs)})
        if first.sha256 is not None:
            item["sha256"] = first.sha256
        if meta.target is not None:
            item["target"] = meta.target
        if meta.kind == "dir":
            had = set(previous.names) if previous is not None and previous.meta is not None \
                and previous.meta.kind == "dir" else set()
            item["entered"] = sorted(set(first.names) - had)
            item["left"] = sorted(had - set(first.names))
    return item


def versions(sources: list[Source], path: str, area: DiffArea | None = None) -> list[dict[str, Any]]:
    """The distinct versions of `path`, oldest first, the live one (the last source) last.

    Each: ``{"state", "snapshots": [{"set", "snapshot", "created", "path"}], "type", "inode",
    "mode", "uid", "gid", "size", "mtime_ns", "mtime" (UTC), "xattrs": [names], "sha256" (files), "target"
    (symlinks), "entered"/"left" (directories), "error" (damaged)}``; the live one also has
    ``"live": true`` and ``"same_as_previous"``. ``"path"`` is where the version is opened: in
    the newest snapshot it is seen in, or live; each snapshot's own is in its item."""
    seen = looks(sources, path, area)
    groups: list[list[Look]] = []
    for look in seen:
        if groups and not look.source.live and not groups[-1][0].source.live \
                and groups[-1][0].fingerprint() == look.fingerprint():
            groups[-1].append(look)
        else:
            groups.append([look])
    out: list[dict[str, Any]] = []
    previous: Look | None = None
    for group in groups:
        item = _version(group, previous, path)
        if group[0].source.live:
            item["live"] = True
            same = previous is not None and previous.fingerprint() == group[0].fingerprint()
            item["same_as_previous"] = same
        out.append(item)
        previous = group[-1]
    return out


__all__ = ["ABSENT", "DAMAGED", "PRESENT", "Look", "Source", "looks", "versions"]
