"""The backup engine: one image from snapshot trees, full or relative to a base image chain.

One job: decide, per volume, which records and bytes go into the new image,
and write them with `media.ImageWriter`. Sources are directory trees (a set's
``<mount root>/snapshots/<set id>/<volume>/``, or any directory), read with
`snapshot.tree` and never followed through a symlink.

- full and copy: every object of every volume (holes skipped);
- incremental (base: the newest full, incremental or differential image of
  the same volumes) and differential (base: the newest full image): only what
  differs from the state the base chain restores (`media.ChainState`), with
  deletions recorded; log: no data outside writers' log files (none yet);
- the fast path, when a volume's `VolumeSource.changes` gives its `changes.ObjectChanges`
  from the base image's snapshot to this one: the tree at this snapshot is
  derived from the base state and the candidates (`changes.tree_at_new`), and
  only candidate files are read, changed files as patches of their captured
  byte ranges (every block captured since the base, without comparing it with
  its pre-image: each block is read once, from the new snapshot); moved files
  that did not change refer to the earlier image's blob instead of being read
  again;
- the fallback compares every object with the base state by kind, size,
  mtime, ctime, mode, owner, link count, rdev, xattrs and symlink target, and
  reads changed files whole.

A job is one `BackupRequest`: the media, each volume as a `VolumeSource` (its
tree, its writers' plan, its diff-area candidates and in-process reader, what
image.json records of it), the type and base, and the job's hooks (documents,
progress, failures).

Invariants: records are written deletions first (topmost deleted paths only),
then puts with parents before children and the first path of every hard-link
group before its other paths (`media.state` checks these rules again on
restore); a hard-link group that changes in any way is written whole.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

from shadowfs.diffarea.schema import KINDS, BackingIno
from shadowfs.errors import BackupJobError
from shadowfs.linux.confined import split_parent
from shadowfs.media import layout, stateindex
from shadowfs.media.imagewriter import ImageWriter
from shadowfs.media.layout import ImageInfo, MediaError
from shadowfs.media.reader import Image, find_base
from shadowfs.media.records import DataRef, Record, RecordError, volume_name
from shadowfs.media.state import ChainState, VolumeState
from shadowfs.media.stateindex import StateIndex, VolumeIndex
from shadowfs.snapshot.changes import ObjectChanges, captured_ranges, tree_at_new, tree_delta, tree_from_map
from shadowfs.snapshot.readers import PathReader, SnapshotReader
from shadowfs.snapshot.tree import ByteSource, Meta, SourceTree, SparseReader
from shadowfs.statedir import utc_now

HIDDEN = (".shadowfs",)
Progress = Callable[[dict[str, Any]], None]


@dataclass
class VolumePlan:
    """What writers' file sets say about one volume (paths relative to the volume root)."""

    component_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (component, writer)
    excluded: set[str] = field(default_factory=set)
    alternates: dict[str, str] = field(default_factory=dict)  # recorded path -> path read from
    skip: set[str] = field(default_factory=set)  # read for a component elsewhere, or shadowed
    keep: set[str] = field(default_factory=set)  # not backed up this time, yet not deleted either
    force: set[str] = field(default_factory=set)  # read whole whatever the base holds (writer gets a full)
    partial: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # path -> writer's ranges

    def drops(self, path: str) -> bool:
        return path in self.excluded or path in self.skip

    def always(self, path: str) -> bool:
        """Whether the path is written into every image whatever the base holds."""
        return path in self.force or path in self.partial


@dataclass
class Documents:
    """The XML documents to keep on the media (opaque here)."""

    bcd: str | bytes | None = None
    wmds: list[str | bytes] = field(default_factory=list)


# (volume, path, component, writer, message): a component file could not be read; the record is left out
FailureSink = Callable[[str, str, str, str, str], None]


class VolumeInfo(TypedDict, total=False):
    """What image.json records of a volume besides its name and source: its live mount, the
    snapshot read (the fast path of the next incremental starts from its `seq`), or that it was
    read live."""

    mount: str
    snapshot_id: str
    seq: int
    live: bool


@dataclass(frozen=True)
class VolumeSource:
    """One volume of a backup: the tree to read and what is known about it."""

    tree: str  # the snapshot (`<mount root>/snapshots/<set id>/<volume>`), the live mount, or any directory
    plan: VolumePlan = field(default_factory=VolumePlan)  # what writers' file sets say about it
    # the diff area's candidates since the base image's snapshot: the fast path
    changes: ObjectChanges | None = None
    # the same snapshot read by inode (`readers.ViewReader`): the fast path without path walks or the
    # round trip through the browser per file; else the tree's paths
    reader: SnapshotReader | None = None
    info: VolumeInfo = field(default_factory=VolumeInfo)


@dataclass(frozen=True)
class BackupRequest:
    """One backup: `volumes` ({name: source}) onto `media` as one image of `type`.

    `base`: the image an incremental, differential or log image builds on (default: the newest
    suitable one of the same volumes). `components` are recorded in image.json as given.
    `documents` are written first; `late_documents` is called once the data is written, before
    the image is committed, for documents that record how the backup went (the BCD after
    SetBackupSucceeded). `failures` receives each component file that could not be read (it is
    left out of the image, which still completes); without it such a file fails the backup.
    """

    media: str
    volumes: Mapping[str, VolumeSource]
    type: str = "full"
    base: str | None = None
    set_id: str = ""
    components: Sequence[Mapping[str, Any]] = ()
    documents: Documents | None = None
    late_documents: Callable[[], Documents] | None = None
    hidden: Collection[str] = HIDDEN
    progress: Progress | None = None
    failures: FailureSink | None = None


def path_key(path: str) -> list[str]:
    return path.split("/") if path else []


def record_of(volume: str, path: str, meta: Meta, source: str | None = None) -> Record:
    """A put record; `source` only when the bytes come from elsewhere than `path` (alternate location)."""
    return Record("put", volume, path, meta.kind, meta.mode, meta.uid, meta.gid, meta.size, meta.atime_ns,
                  meta.mtime_ns, meta.ctime_ns, meta.nlink, meta.rdev, meta.ino, dict(meta.xattrs),
                  meta.target, source=None if source in (None, path) else source)


def same_meta(record: Record, meta: Meta) -> bool:
    """Whether nothing the fallback compares differs."""
    return (record.kind == meta.kind and record.size == meta.size and record.mtime_ns == meta.mtime_ns
            and record.ctime_ns == meta.ctime_ns and record.mode == meta.mode and record.uid == meta.uid
            and record.gid == meta.gid and record.nlink == meta.nlink and record.rdev == meta.rdev
            and record.xattrs == meta.xattrs and record.target == meta.target)


def fold_chain(media: str, image_ids: list[str]) -> ChainState:
    """The state the given chain restores (manifests only; blobs are not read)."""
    images = {image_id: Image(media, image_id) for image_id in image_ids}
    state = ChainState(lambda owner, pack: images[owner].pack_size(pack))
    with no_gc():
        for image_id in image_ids:
            state.apply(image_id, images[image_id].info.type, images[image_id].records())
    return state


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cycle collector: a job holds a tree of many small objects that all stay alive, and
    collections over them would cost more than the job's own work."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _Run:
    """One backup run: the writer, the counters, progress."""

    def __init__(self, writer: ImageWriter, progress: Progress | None,
                 failures: FailureSink | None = None, index: StateIndex | None = None) -> None:
        self.writer = writer
        self.progress = progress
        self.failures = failures
        self.files = 0
        self.bytes = 0
        # The new image's state index: the base's, which the fast path still reads while records
        # are emitted, so they wait in `pending`; a fresh one takes every record at once.
        self.index = index if index is not None else StateIndex()
        self.defer = index is not None
        self.pending: list[Record] = []

    def fail(self, record: Record, message: str) -> bool:
        """Report a component file that cannot be read; True when the caller should leave it out."""
        if self.failures is None or record.component is None:
            return False
        self.failures(record.volume, record.path, record.component, record.writer or "", message)
        return True

    def store_record(self, src: SourceTree, record: Record, source: str, size: int,
                     regions: list[tuple[int, int]] | None = None) -> bool:
        """Store the bytes of `record` (whole, or the writer's partial ranges); False if it failed for
        a component (reported to the failure sink; the record must then be left out)."""
        try:
            if regions is not None:
                record.data, _ = self.store(src, source, size, "full", regions)
                record.partial = list(regions)
            else:
                record.data, record.sha256 = self.store(src, source, size)
        except OSError as exc:
            if self.fail(record, f"cannot read {source or '/'}: {exc.strerror or exc}"):
                return False
            raise
        return True

    def emit(self, record: Record) -> None:
        self.writer.add_record(record)
        if self.defer:
            self.pending.append(record)
        else:
            self.index.add(self.writer.info.id, record)
        if record.op == "put" and record.kind != "dir":
            self.files += 1
        if self.progress is not None:
            self.progress({"files": self.files, "bytes": self.bytes,
                           "path": f"{record.volume}:{record.path}"})

    def store(self, src: SourceTree, path: str, size: int, how: str = "full",
              regions: list[tuple[int, int]] | None = None,
              source: ByteSource | None = None) -> tuple[DataRef, str | None]:
        """Store the file at `path` (or the bytes of `source`, which stays the caller's) as one blob."""
        if source is None:
            with src.source(path) as own:
                return self.store(src, path, size, how, regions, own)
        reader = SparseReader(source, size, regions)
        ref = self.writer.add_blob(reader.chunks(), how)
        ref.extents = reader.extents
        self.bytes += reader.bytes
        return ref, reader.sha256


@contextmanager
def unreadable(volume: str, source: VolumeSource) -> Iterator[None]:
    """Turn an object of the snapshot that cannot be read (EIO: damaged by a lapse of protection,
    design §9.3, or a failing disk) into a `BackupJobError` naming it: the image is not
    completed, rather than holding data of another instant or leaving the object out."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        where = f"{volume}:{exc.filename}" if exc.filename else f"volume {volume}"
        snapshot = source.info.get("snapshot_id")
        hint = f"; `shadowfs snapshot damage {snapshot}` lists its damaged objects" if snapshot else ""
        raise BackupJobError(f"{where}: cannot be read from the snapshot: {exc.strerror}{hint}") from exc


def backup(request: BackupRequest) -> str:
    """Write the image `request` describes (see the module docstring); returns the image id."""
    media, type, sources = request.media, request.type, request.volumes
    if type not in layout.BACKUP_TYPES:
        raise MediaError(f"unknown backup type {type!r} (one of {', '.join(layout.BACKUP_TYPES)})")
    try:
        for name in sources:
            volume_name(name)
    except RecordError as exc:
        raise MediaError(str(exc)) from None
    volumes = sorted(sources)
    base: Image | None = None
    base_index: StateIndex | None = None
    chain: ChainState | None = None
    if type in ("incremental", "differential", "log"):
        base = Image(media, request.base) if request.base else find_base(media, type, volumes)
        if base is None:
            raise MediaError(f"no base image on {media} for a {type} backup of {', '.join(volumes)}: "
                             "run a full backup first")
        allowed = {"incremental": ("full", "incremental", "differential"), "differential": ("full",),
                   "log": ("full", "incremental", "differential", "log")}[type]
        if base.info.type not in allowed:
            raise MediaError(f"image {base.id} is a {base.info.type} image: "
                             f"a {type} backup cannot build on it")
        with no_gc():  # one parse makes many objects at once: collections over them would double its time
            base_index = stateindex.load(base)
        if base_index is None:
            chain = fold_chain(media, base.info.chain + [base.id])
            base_index = stateindex.from_chain(chain)
    info = ImageInfo(id=layout.new_image_id(), created=utc_now("microseconds"), type=type,
                     set_id=request.set_id,
                     volumes=[{"name": v, "source": os.path.abspath(sources[v].tree), **sources[v].info}
                              for v in volumes],
                     base=None if base is None else base.id,
                     chain=[] if base is None else base.info.chain + [base.id],
                     components=list(request.components))
    with ImageWriter(media, info) as writer, no_gc():
        if request.documents is not None:
            if request.documents.bcd is not None:
                writer.add_document("bcd", request.documents.bcd)
            for wmd in request.documents.wmds:
                writer.add_document("wmd", wmd)
        run = _Run(writer, request.progress, request.failures, base_index)
        for volume in volumes:
            plan = sources[volume].plan
            with unreadable(volume, sources[volume]), \
                    SourceTree(sources[volume].tree, hidden=request.hidden) as src:
                if type == "log":
                    _log(run, volume, src, plan)
                    continue
                if base is None or base_index is None or volume not in base_index.volumes:
                    _full(run, volume, src, plan)
                    continue
                hint = sources[volume].changes
                reader = sources[volume].reader or PathReader(src)
                if hint is not None and _hint_fits(base, volume, hint, base_index.volumes[volume], reader):
                    _fast(run, volume, src, plan, base_index.volumes[volume], hint, reader)
                else:
                    if chain is None:
                        chain = fold_chain(media, base.info.chain + [base.id])
                    _compare(run, volume, src, plan, chain.volumes[volume])
        delta = run.index.delta_for(info.id, len(run.pending)) if run.defer else None
        if delta is None:
            run.index.apply(info.id, run.pending)
        writer.add_state_index(delta if delta is not None else run.index.encode(info.id))
        if request.late_documents is not None:
            late = request.late_documents()
            if late.bcd is not None:
                writer.add_document("bcd", late.bcd)
            for wmd in late.wmds:
                writer.add_document("wmd", wmd)
        return writer.commit({"files": run.files, "bytes": run.bytes})


# ---- full ------------------------------------------------------------------------------------------


def _objects(src: SourceTree, plan: VolumePlan, run: _Run | None = None,
             volume: str = "") -> list[tuple[str, Meta, str]]:
    """(recorded path, metadata, path read from) of every object to back up, in path order."""
    out = [(path, meta, path) for path, meta in src.walk() if not (meta.kind != "dir" and plan.drops(path))]
    if plan.alternates:
        present = {path for path, _, _ in out}
        dirs = {path for path, meta, _ in out if meta.kind == "dir"}
        out = [item for item in out if item[0] not in plan.alternates]
        for recorded, source in plan.alternates.items():
            meta = src.meta(source)
            if meta is not None and meta.kind == "file" and split_parent(recorded)[0] in dirs:
                out.append((recorded, meta, source))
            elif recorded in present:
                message = f"alternate location {source!r} of {recorded!r} is not a readable file"
                probe = _tag(Record("put", volume, recorded), plan)
                if run is None or not run.fail(probe, message):
                    raise MediaError(message)
        out.sort(key=lambda item: path_key(item[0]))
    return out


def _tag(record: Record, plan: VolumePlan) -> Record:
    owner = plan.component_of.get(record.path)
    if owner is not None:
        record.component, record.writer = owner
    return record


def _full(run: _Run, volume: str, src: SourceTree, plan: VolumePlan) -> None:
    leaders: dict[int, str] = {}
    for path, meta, source in _objects(src, plan, run, volume):
        if meta.kind != "dir" and path in plan.keep and path not in plan.partial:
            continue
        record = _tag(record_of(volume, path, meta, source), plan)
        if meta.kind == "file":
            ranges = plan.partial.get(path)
            leader = leaders.get(meta.ino) if meta.nlink > 1 and source == path and ranges is None else None
            if leader is not None:
                record.link = leader
            else:
                if not run.store_record(src, record, source, meta.size, ranges):
                    continue
                if meta.nlink > 1 and source == path and ranges is None:
                    leaders[meta.ino] = path
        run.emit(record)


def _log(run: _Run, volume: str, src: SourceTree, plan: VolumePlan) -> None:
    """A log image: only the component files that count for log backups, whole or their partial
    ranges; nothing is deleted (a log image adds to what its chain restores)."""
    wanted = {path for path in plan.component_of if path not in plan.keep} | set(plan.partial)
    if not wanted:
        return
    objects = _objects(src, plan, run, volume)
    have = {path for path, _, _ in objects}
    need: set[str] = set()
    for path in wanted:
        if path in have:
            parts = path.split("/")
            need.update("/".join(parts[:i]) for i in range(len(parts)))
    for path, meta, source in objects:
        if path in need and meta.kind == "dir":
            run.emit(_tag(record_of(volume, path, meta), plan))
        elif path in wanted and meta.kind == "file":
            record = _tag(record_of(volume, path, meta, source), plan)
            if run.store_record(src, record, source, meta.size, plan.partial.get(path)):
                run.emit(record)


# ---- relative to a base chain ------------------------------------------------------------------


def _topmost(paths: list[str]) -> list[str]:
    chosen: list[str] = []
    for path in sorted(paths, key=path_key):
        if not any(path.startswith(top + "/") for top in chosen):
            chosen.append(path)
    return chosen


def _emit_deletes(run: _Run, volume: str, paths: list[str]) -> None:
    for path in sorted(_topmost(paths), key=path_key, reverse=True):
        run.emit(Record("delete", volume, path))


def _emit_puts(run: _Run, puts: dict[str, Record]) -> None:
    for path in sorted(puts, key=path_key):
        run.emit(puts[path])


def _compare(run: _Run, volume: str, src: SourceTree, plan: VolumePlan, base: VolumeState) -> None:
    objects = _objects(src, plan, run, volume)
    current = {path: meta for path, meta, _ in objects}
    _emit_deletes(run, volume, [p for p, e in base.entries.items()
                                if p and (p not in current or current[p].kind != e.record.kind)])
    groups: dict[int, list[str]] = {}
    for path, meta, source in objects:
        if meta.kind == "file" and meta.nlink > 1 and source == path and path not in plan.partial:
            groups.setdefault(meta.ino, []).append(path)
    base_leader = {p: (e.record.link or p) for p, e in base.entries.items()}
    puts: dict[str, Record] = {}
    for path, meta, source in objects:
        old = base.entries.get(path)
        if meta.kind != "dir" and path in plan.keep and not plan.always(path):
            continue  # not backed up this time: the chain keeps what it had
        group = groups.get(meta.ino) if meta.kind == "file" and source == path and path not in plan.partial \
            else None
        if group is not None and len(group) > 1:
            leader = group[0]
            if path != leader:
                continue  # decided with the leader
            if all(p in base.entries and same_meta(base.entries[p].record, current[p])
                   and base_leader[p] == base_leader[leader] and p not in plan.force for p in group):
                continue
            records = {member: _tag(record_of(volume, member, current[member]), plan) for member in group}
            if not run.store_record(src, records[leader], leader, meta.size):
                continue
            for member in group[1:]:
                records[member].link = leader
            puts.update(records)
            continue
        if old is not None and old.record.link is None and source == path and same_meta(old.record, meta) \
                and not plan.always(path):
            continue
        record = _tag(record_of(volume, path, meta, source), plan)
        ranges = plan.partial.get(path)
        if meta.kind == "file" and not run.store_record(src, record, source, meta.size, ranges):
            continue
        puts[path] = record
    _emit_puts(run, puts)


def _hint_fits(base: Image, volume: str, hint: ObjectChanges, vindex: VolumeIndex,
               reader: SnapshotReader) -> bool:
    """Whether the candidates really lead from the base image's snapshot to this tree."""
    recorded = next((v for v in base.info.volumes if v.get("name") == volume), {})
    if recorded.get("seq") != hint.base or "" not in vindex.entries:
        return False
    return reader.root() == vindex.entries[""].ino


def _fast(run: _Run, volume: str, src: SourceTree, plan: VolumePlan, base: VolumeIndex,
          changes: ObjectChanges, reader: SnapshotReader) -> None:
    base.settle()
    map_b = {path: (BackingIno(entry.ino), KINDS[entry.kind]) for path, entry in base.entries.items()}
    tree_b = tree_from_map(map_b)
    tree_n = tree_at_new(tree_b, changes, reader)
    moves = tree_delta(tree_b, {ino: path for path, (ino, kind) in map_b.items() if kind == stat.S_IFDIR},
                       tree_n)
    moved_in, moved_out = moves.moved_in, moves.moved_out

    def at_new(path: str) -> tuple[BackingIno, int] | None:
        return moved_in.get(path) or (map_b.get(path) if path not in moved_out else None)

    _emit_deletes(run, volume, [p for p, (ino, _) in moved_out.items()
                                if p and (p not in moved_in or moved_in[p][0] != ino)])
    chosen = {ino for ino, _ in moved_in.values()}
    chosen.update(changes.inodes)
    for path in (*plan.alternates, *plan.force, *plan.partial):
        value = at_new(path)
        if value is not None:
            chosen.add(value[0])
    # every path of the chosen objects, at base and at new (hard links: stable and moved ones)
    paths_b: dict[BackingIno, list[str]] = {}
    for path, ino in [(p, ino) for p, (ino, _) in map_b.items() if ino in chosen]:
        paths_b.setdefault(ino, []).append(path)
    paths_n: dict[BackingIno, list[str]] = {ino: [p for p in paths if p not in moved_out]
                                     for ino, paths in paths_b.items()}
    for path, (ino, _) in moved_in.items():
        paths_n.setdefault(ino, []).append(path)
    paths_n = {ino: sorted(paths, key=path_key) for ino, paths in paths_n.items() if paths and ino in chosen}
    map_n: dict[str, tuple[BackingIno, int]] = {}
    for paths in paths_n.values():
        for path in paths:
            value = at_new(path)
            # every path of `paths_n` exists at new: moved in, or at base and not moved out
            assert value is not None
            map_n[path] = value
    puts: dict[str, Record] = {}
    order = sorted(paths_n, key=lambda i: path_key(paths_n[i][0]))  # directory by directory
    captured = {ino: sorted(changed.blocks) for ino, changed in changes.inodes.items()}
    reader.prefetch([(ino, paths_n[ino][0], captured.get(ino, [])) for ino in order])
    for ino in order:
        group = [p for p in paths_n[ino] if not (map_n[p][1] != stat.S_IFDIR and plan.drops(p))]
        if group and map_n[group[0]][1] != stat.S_IFDIR:
            group = [p for p in group if p not in plan.keep or plan.always(p)]
        if not group:
            continue
        leader = group[0]
        meta = reader.meta(ino, leader)
        if meta is None:
            raise MediaError(f"{volume}:{leader} vanished from the snapshot while it was read")
        record = _tag(record_of(volume, leader, meta), plan)
        if meta.kind == "file":
            if leader in plan.partial or leader in plan.force:
                group = [leader] if leader in plan.partial else group
                if not run.store_record(src, record, plan.alternates.get(leader, leader), meta.size,
                                        plan.partial.get(leader)):
                    continue
                if leader in plan.alternates:
                    record.source = plan.alternates[leader]
            else:
                try:
                    _fast_data(run, src, record, meta, base, changes, paths_b.get(ino, []),
                               leader not in moved_in, plan, reader)
                except OSError as exc:
                    if run.fail(record, f"cannot read {leader}: {exc.strerror or exc}"):
                        continue
                    raise
        puts[leader] = record
        for member in group[1:]:
            puts[member] = _tag(Record("put", volume, member, meta.kind, meta.mode, meta.uid, meta.gid,
                                       meta.size, meta.atime_ns, meta.mtime_ns, meta.ctime_ns, meta.nlink,
                                       meta.rdev, meta.ino, dict(meta.xattrs), link=leader), plan)
    _emit_puts(run, puts)


def _fast_data(run: _Run, src: SourceTree, record: Record, meta: Meta, base: VolumeIndex,
               changes: ObjectChanges, base_paths: list[str], stable: bool, plan: VolumePlan,
               reader: SnapshotReader) -> None:
    path = record.path
    if path in plan.alternates:
        source = plan.alternates[path]
        record.source = source
        record.data, record.sha256 = run.store(src, source, meta.size)
        return
    before = next((base.entries[p] for p in base_paths if p in base.entries
                   and base.entries[p].ino == meta.ino and base.entries[p].kind == "file"), None)
    with reader.source(meta.ino, path, meta.size) as data:
        if before is None:
            record.data, record.sha256 = run.store(src, path, meta.size, source=data)
            return
        old_size = before.size
        ranges = captured_ranges(changes, meta.ino, old_size, meta.size) if meta.ino in changes.inodes else []
        changed = bool(ranges) or old_size != meta.size
        if stable:  # the chain restores this very object at this path: patch it in place
            if changed:
                record.data, _ = run.store(src, path, meta.size, "patch", ranges, source=data)
            else:
                record.data, record.sha256 = DataRef("keep"), before.sha256
            return
        whole = base.whole_of(before)
        if not changed and whole is not None:
            image, ref = whole
            record.data = DataRef("ref", list(ref.extents), ref.pack, ref.offset, ref.length, ref.sha256,
                                  image)
            record.sha256 = before.sha256
            return
        record.data, record.sha256 = run.store(src, path, meta.size, source=data)
