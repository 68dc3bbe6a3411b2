"""Backup and restore jobs with writers: the VSS sequence around the backup and restore engines.

```
 run_backup: gather_writer_metadata -> add_component (per writer, effective type) -> set_backup_state
   -> set_previous_backup_stamp (every component of the base image's saved BCD) -> start_snapshot_set
   -> prepare_for_backup -> add_to_snapshot_set (volumes that need a snapshot) -> do_snapshot_set
   -> file sets from the snapshot (fileset) + differenced + partial files (the BCD after PostSnapshot)
   -> backup.backup (failures -> set_backup_succeeded(False, msg)) -> BCD and WMDs in the image
   -> backup_complete
 run_restore: per image of the chain: load its BCD -> select components of registered writers
   -> set_additional_restores (true unless this is the component's last image) -> add_new_target
   -> pre_restore -> restore.restore writes the image (new targets, directed targets) -> post_restore
```

One job: turn writers' documents into the engines' plans (`backup.VolumePlan`,
`restore.ImageSteps`), and run the VSS calls in order around them. Writer
paths are absolute paths of the live namespace (a volume's mount); plans hold
paths relative to the volume root.

Rules (seeds 001, 002, 003):
- exclusions of every writer win, over components, partial files and data
  outside components;
- a spec counts only if its backup-type mask has the bit of the writer's
  effective type (a writer whose schema lacks the requested type, or an
  exclusive incremental/differential writer whose chain mixes the two, gets
  a full backup: its files are read whole); files only uncounted specs name
  are not backed up and not deleted from the chain either;
- a volume whose counted specs all lack the snapshot-required bit of the type
  is left out of the snapshot set and read live (if no volume needs a
  snapshot, no set is made);
- differenced files (incremental and differential only): a file that only
  differenced specs name (one that matches a metadata spec exactly replaces
  it) is backed up only if its mtime is after the spec's time; a zero time is
  the requester's last backup time, the snapshot-set creation time of the
  base image's BCD; in full and copy backups differenced specs simply add
  their files;
- partial files: the named ranges (a range string, or a ranges file read from
  the snapshot) are checked against the file (in the file, disjoint, count
  agreeing with length) before anything is written, then only those ranges
  are stored; the ranges file is backed up whole; a partial file wins over
  any other spec naming the same file; one on a volume outside the backup is
  ignored with a warning;
- a component file that cannot be read fails its component: the file and the
  reason are logged and recorded with `set_backup_succeeded(False, msg)`;
  the image still completes;
- restore: directed targets with `file=` ranges are refused; source ranges
  must lie inside the backed-up source file and pair with the destination
  ranges; everything is checked before the image it belongs to is written.

Errors (`shadowfs.errors`): `BackupRefused` (exit 2) for a job refused before it
starts (an unknown type or volume, no base image, new targets without writers),
`BackupJobError` (exit 1) for what fails on the way (a writer's answer, bad
ranges, unreadable documents); the requester's errors pass through as they are,
so a daemon that is not running stays "unreachable" (exit 3) for the CLI.
This module never imports the CLI.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shadowfs import statedir
from shadowfs.backup.engine import HIDDEN, Documents, Progress, VolumePlan, backup
from shadowfs.backup.fileset import ComponentFiles, Spec, build_file_sets, spec_covers, specs_for_type
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.documents import (
    BackupComponents as BackupComponentsDocument,
)
from shadowfs.documents import (
    BackupSchema,
    BackupType,
    ComponentState,
    DocumentError,
    FileSpecBackupType,
    RangeError,
    RestoreTarget,
    RestoreType,
    SnapshotContext,
    WriterMetadata,
    check_directed_ranges,
    parse_range_string,
    ranges_file_path,
    read_ranges_fd,
)
from shadowfs.documents.rules import full_path
from shadowfs.errors import BackupJobError, BackupRefused, ShadowfsError
from shadowfs.ipc.client import request_fds
from shadowfs.ipc.frames import close_fds
from shadowfs.media import Image, find_base, open_image
from shadowfs.media.reader import chain_images
from shadowfs.media.state import ChainState
from shadowfs.restore.engine import Directed, ImageSteps, Relocation, RestoreError, RestoreResult, restore
from shadowfs.snapshot import changes
from shadowfs.snapshot.tree import SourceTree
from shadowfs.snapshot.view import LiveObjects, SnapshotView
from shadowfs.vss.requester import RequesterError, SyncBackupComponents

log = logging.getLogger(__name__)

UNCOUNTED = "\0uncounted\0"   # prefix of pseudo components: files only uncounted specs name
_TYPES = {"full": BackupType.FULL, "incremental": BackupType.INCREMENTAL,
          "differential": BackupType.DIFFERENTIAL, "log": BackupType.LOG, "copy": BackupType.COPY}


# ---- paths ---------------------------------------------------------------------------------------


def locate(path: str, roots: Mapping[str, str]) -> tuple[str, str] | None:
    """(volume, path relative to its root) of an absolute live path, or None when on no volume."""
    path = os.path.normpath(path)
    best: tuple[str, str] | None = None
    for volume, root in roots.items():
        root = os.path.normpath(root)
        if statedir.is_within(path, root) and (best is None or len(root) > len(roots[best[0]])):
            best = (volume, path[len(root):].lstrip("/"))
    return best


# ---- the component selection -------------------------------------------------------------------


@dataclass
class Chosen:
    """One selected component and what it backs up."""

    instance_id: str
    writer_id: str
    writer_name: str
    type_value: Any
    logical_path: str
    name: str
    specs: list[Spec]
    effective: BackupType
    failures: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return full_path(self.logical_path, self.name)


def _spec_of(spec: Any) -> Spec:
    return Spec(spec.path, spec.filespec, spec.recursive, spec.alternate_path, int(spec.backup_type_mask))


def effective_type(schema: BackupSchema, wanted: BackupType, chain_types: Sequence[str]) -> BackupType:
    """The backup type a writer gets: the requested one if its schema supports it, else full."""
    if not schema.supports(wanted):
        return BackupType.FULL
    if schema & BackupSchema.EXCLUSIVE_INCREMENTAL_DIFFERENTIAL:
        other = {"incremental": "differential", "differential": "incremental"}.get(wanted.value)
        if other is not None and other in chain_types:
            return BackupType.FULL
    return wanted


def select_components(wmds: Mapping[str, WriterMetadata], roots: Mapping[str, str], wanted: BackupType,
                      chain_types: Sequence[str]) -> list[Chosen]:
    """Every top-level component with a file spec on one of the volumes (subcomponents fold in)."""
    chosen: list[Chosen] = []
    for instance_id, wmd in wmds.items():
        effective = effective_type(wmd.backup_schema, wanted, chain_types)

        def on_volumes(component: Any) -> bool:
            return any(locate(s.path, roots) is not None
                       or (s.alternate_path and locate(s.alternate_path, roots) is not None)
                       for s in component.all_file_specs)

        relevant = [c for c in wmd.components if on_volumes(c)]
        names = {c.full_path for c in relevant}
        for component in relevant:
            if any(parent.full_path in names for parent in wmd.parents(component)):
                continue
            specs = [_spec_of(s) for s in component.all_file_specs]
            for sub in wmd.subcomponents(component):
                specs.extend(_spec_of(s) for s in sub.all_file_specs)
            chosen.append(Chosen(instance_id, str(wmd.identity.writer_id), wmd.identity.friendly_name,
                                 component.type, component.logical_path, component.name, specs, effective))
    return chosen


# ---- plans ---------------------------------------------------------------------------------------


@dataclass
class Planned:
    """The engines' plans and what the job must remember about them."""

    plans: dict[str, VolumePlan]
    warnings: list[str]


def _mtime_filter(component: ComponentState, chosen: Chosen, last_backup_ns: int,
                  use_filter: bool) -> tuple[list[Spec], list[tuple[Spec, int]]]:
    """(plain counted specs, differenced specs with their thresholds) of one component."""
    counted = list(specs_for_type(chosen.specs, chosen.effective.value))
    differenced: list[tuple[Spec, int]] = []
    for item in component.differenced_files:
        threshold = item.last_modify_time or last_backup_ns
        same = [s for s in counted if (s.path.rstrip("/") or "/", s.filespec, s.recursive)
                == (item.path.rstrip("/") or "/", item.filespec, item.recursive)]
        spec = same[0] if same else Spec(item.path, item.filespec, item.recursive)
        if same:
            counted = [s for s in counted if s is not same[0]]
        differenced.append((spec, threshold if use_filter else 0))
    return counted, differenced


def build_plans(chosen: Sequence[Chosen], document: BackupComponentsDocument,
                wmds: Mapping[str, WriterMetadata], roots: Mapping[str, str], sources: Mapping[str, str],
                base_exists: bool, last_backup_ns: int) -> Planned:
    """Per-volume plans from the writers' specs walked over `sources` (snapshot or live trees).

    Raises BackupJobError (before anything is written) for bad partial-file ranges."""
    warnings: list[str] = []
    excluded = [Spec(e.path, e.filespec, e.recursive) for wmd in wmds.values() for e in wmd.excluded_files]
    plain: dict[str, list[Spec]] = {}
    differenced: dict[str, list[tuple[Spec, int]]] = {}
    uncounted: dict[str, list[Spec]] = {}
    states: dict[str, ComponentState] = {}
    for item in chosen:
        state = document.component(uuid.UUID(item.instance_id), item.logical_path, item.name)
        states[item.key + "\0" + item.instance_id] = state
        use_filter = item.effective in (BackupType.INCREMENTAL, BackupType.DIFFERENTIAL) and base_exists
        counted, diffs = _mtime_filter(state, item, last_backup_ns, use_filter)
        ident = item.key + "\0" + item.instance_id
        plain[ident] = counted
        differenced[ident] = diffs
        counted_set = set(specs_for_type(item.specs, item.effective.value))
        uncounted[ident] = [s for s in item.specs if s not in counted_set]
    interesting = {v for spec in [s for specs in plain.values() for s in specs]
                   + [s for diffs in differenced.values() for s, _ in diffs]
                   + [s for specs in uncounted.values() for s in specs] + excluded
                   for path in (spec.path, spec.alternate_path) if path
                   for v in [locate(path, roots)] if v is not None for v in [v[0]]}
    partial_files: list[tuple[str, Any]] = []
    for item in chosen:
        ident = item.key + "\0" + item.instance_id
        for partial in states[ident].partial_files:
            partial_files.append((ident, partial))
            where = locate(os.path.join(partial.path, partial.filename), roots)
            if where is not None:
                interesting.add(where[0])
    plans = {volume: VolumePlan() for volume in sources}
    metas: dict[str, dict[str, Any]] = {}
    objects: list[tuple[str, bool]] = []
    for volume in sorted(interesting & set(sources)):
        root = os.path.normpath(roots[volume])
        metas[volume] = {}
        with SourceTree(sources[volume], hidden=HIDDEN) as src:
            for rel, meta in src.walk():
                metas[volume][rel] = meta
                objects.append((os.path.join(root, rel) if rel else root, meta.kind == "dir"))
    if not objects:
        return Planned(plans, warnings)
    by_key = {item.key + "\0" + item.instance_id: item for item in chosen}
    components = [ComponentFiles(ident, by_key[ident].instance_id,
                                 tuple(plain[ident]) + tuple(s for s, _ in differenced[ident]))
                  for ident in plain]
    components += [ComponentFiles(UNCOUNTED + ident, by_key[ident].instance_id, tuple(uncounted[ident]))
                   for ident in uncounted]
    sets = build_file_sets(objects, components, excluded)
    recorded: set[str] = set()
    for ident, selected in sets.components.items():
        pseudo = ident.startswith(UNCOUNTED)
        item = by_key[ident[len(UNCOUNTED):] if pseudo else ident]
        for sel in selected:
            place = locate(sel.path, roots)
            origin = locate(sel.source, roots)
            if place is None or origin is None:
                continue
            volume, rel = place
            plan = plans[volume]
            recorded.add(sel.path)
            if pseudo:
                plan.keep.add(rel)
                continue
            if origin[0] != volume:
                item.failures.append(f"{sel.path}: alternate location {sel.source} is on another volume")
                plan.skip.add(rel)
                continue
            plan.component_of[rel] = (item.key, item.instance_id)
            if sel.source != sel.path:
                plan.alternates[rel] = origin[1]
            if item.effective is BackupType.FULL and base_exists:
                plan.force.add(rel)
            covered_plain = any(spec_covers(s.path, s.filespec, s.recursive, sel.path) for s in plain[ident])
            thresholds = [t for s, t in differenced[ident] if spec_covers(s.path, s.filespec, s.recursive,
                                                                            sel.path)]
            meta = metas[volume].get(origin[1])
            if not covered_plain and thresholds and meta is not None and meta.mtime_ns <= min(thresholds):
                plan.keep.add(rel)
    for path in sets.excluded:
        place = locate(path, roots)
        if place is not None:
            plans[place[0]].excluded.add(place[1])
    outside = set(sets.outside)
    for path, is_dir in objects:
        if not is_dir and path not in outside and path not in recorded and path not in sets.excluded:
            place = locate(path, roots)
            if place is not None:
                plans[place[0]].skip.add(place[1])  # read for a component from elsewhere, or shadowed
    for ident, partial in partial_files:
        _plan_partial(by_key[ident], partial, roots, sources, metas, plans, warnings)
    return Planned(plans, warnings)


def _plan_partial(item: Chosen, partial: Any, roots: Mapping[str, str], sources: Mapping[str, str],
                  metas: Mapping[str, Mapping[str, Any]], plans: Mapping[str, VolumePlan],
                  warnings: list[str]) -> None:
    path = os.path.join(partial.path, partial.filename)
    label = f"component {item.key!r} of writer {item.writer_name!r}: partial file {path}"
    place = locate(path, roots)
    if place is None or place[0] not in sources:
        warnings.append(f"{label} is on no volume of this backup: ignored")
        return
    volume, rel = place
    plan = plans[volume]
    if rel in plan.excluded:
        return  # exclusions win
    meta = metas[volume].get(rel)
    if meta is None or meta.kind != "file":
        raise BackupJobError(f"{label}: not a regular file in the snapshot")
    try:
        file_ref = ranges_file_path(partial.ranges)
        if file_ref is None:
            ranges = parse_range_string(partial.ranges, file_size=meta.size)
        else:
            where = locate(file_ref, roots)
            if where is None or where[0] != volume:
                raise BackupJobError(f"{label}: ranges file {file_ref} is not on volume {volume}")
            with SourceTree(sources[volume], hidden=HIDDEN) as src:
                fd = src.open_file(where[1])
                try:
                    ranges = read_ranges_fd(fd, name=file_ref, file_size=meta.size)
                finally:
                    os.close(fd)
            plan.component_of[where[1]] = (item.key, item.instance_id)
            plan.force.add(where[1])
            plan.keep.discard(where[1])
            plan.skip.discard(where[1])
    except (RangeError, OSError) as exc:
        raise BackupJobError(f"{label}: {exc}") from None
    plan.partial[rel] = sorted((r.offset, r.length) for r in ranges)
    plan.component_of[rel] = (item.key, item.instance_id)
    plan.keep.discard(rel)
    plan.skip.discard(rel)


# ---- backup ----------------------------------------------------------------------------------------


class _Hints:
    """Per volume: the diff area's candidates since the base image's snapshot, and a reader of
    the new snapshot in this process (by inode, no path walk, no round trip through the snapshot
    browser) where the daemon hands over the volume's backing directory. Close after use."""

    def __init__(self) -> None:
        self.changes: dict[str, changes.ObjectChanges] = {}
        self.readers: dict[str, changes.ViewReader] = {}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.view.live.close()
            os.close(reader.view.live.root_fd)
        for hint in self.changes.values():
            hint.area.close()


def _diff_hints(state_dir: str, base: Image | None, snapshots: Sequence[Mapping[str, Any]],
                alive: set[str], direct: bool) -> _Hints:
    """Diff-area candidates per volume, where the base image's snapshot still exists."""
    hints = _Hints()
    if base is None:
        return hints
    for snap in snapshots:
        recorded = next((v for v in base.info.volumes if v.get("name") == snap["volume"]), None)
        if recorded is None or recorded.get("snapshot_id") not in alive \
                or not isinstance(recorded.get("seq"), int):
            continue
        try:
            area = DiffArea.open(statedir.diff_area_path(state_dir, snap["volume"]), readonly=True)
        except DiffAreaError:
            continue
        try:
            hints.changes[snap["volume"]] = changes.scan(area, recorded["seq"], int(snap["seq"]))
        except DiffAreaError:
            area.close()
            continue
        reader = _direct_reader(state_dir, snap["volume"], area, int(snap["seq"])) if direct else None
        if reader is not None:
            hints.readers[snap["volume"]] = reader
    return hints


def _direct_reader(state_dir: str, volume: str, area: DiffArea, seq: int) -> changes.ViewReader | None:
    """Snapshot `seq` of `volume` read in this process, or None where that cannot be (the daemon
    does not hand out the backing directory, or opening by inode is not allowed: not root)."""
    try:
        reply, fds = request_fds(state_dir, {"op": "volume_backing", "name": volume})
    except ShadowfsError as exc:
        log.info("volume %s: reading the snapshot through the browser (%s)", volume, exc)
        return None
    if len(fds) != 1 or reply.get("volume") != volume:
        close_fds(fds)
        log.info("volume %s: reading the snapshot through the browser (no backing descriptor)", volume)
        return None
    live = LiveObjects(fds[0])
    try:
        os.close(live.open(live.root_ino, os.O_PATH))
    except OSError as exc:
        live.close()
        os.close(fds[0])
        log.info("volume %s: reading the snapshot through the browser (open by inode: %s)", volume,
                 exc.strerror)
        return None
    return changes.ViewReader(SnapshotView(area, live, seq))


def _base_document(base: Image | None) -> BackupComponentsDocument | None:
    if base is None or base.info.bcd is None:
        return None
    try:
        return BackupComponentsDocument.from_xml(base.document(base.info.bcd))
    except DocumentError as exc:
        raise BackupJobError(f"image {base.id}: its backup components document is unreadable: {exc}") \
            from None


def _created_ns(image: Image) -> int:
    return int(datetime.fromisoformat(image.info.created.replace("Z", "+00:00")).timestamp() * 1e9)


@dataclass
class BackupOutcome:
    """What `run_backup` did."""

    image: str
    set_id: str
    type: str
    base: str | None
    components: list[dict[str, Any]]
    live_volumes: list[str]
    fast_path: list[str]
    warnings: list[str]
    direct: list[str] = field(default_factory=list)  # volumes whose snapshot was read in-process


def run_backup(state_dir: str, media: str, volumes: Sequence[str], backup_type: str = "full", *,
               base_id: str | None = None, keep_snapshot: bool = False, with_writers: bool = True,
               progress: Progress | None = None, direct: bool = True) -> BackupOutcome:
    """One VSS backup of `volumes` onto `media` as an image of `backup_type` (see the module docstring).

    `direct`: an incremental or differential whose base snapshot still exists reads the new
    snapshot in this process, by inode, where the daemon allows it (root); otherwise, and with
    `direct` False, every byte comes through the snapshot browser."""
    wanted = _TYPES.get(backup_type)
    if wanted is None:
        raise BackupRefused(f"unknown backup type {backup_type!r}")
    base: Image | None = None
    if backup_type in ("incremental", "differential", "log"):
        base = open_image(media, base_id) if base_id else find_base(media, backup_type, list(volumes))
        if base is None:
            raise BackupRefused(f"no base image on {media} for a {backup_type} backup of "
                                 f"{', '.join(volumes)}: run a full backup first")
    chain_types = [] if base is None else [open_image(media, i).info.type for i in base.info.chain] \
        + [base.info.type]
    bc = SyncBackupComponents(state_dir)
    try:
        return _backup(bc, state_dir, media, list(volumes), wanted, base, chain_types, keep_snapshot,
                       with_writers, progress, direct)
    finally:
        bc.close()


def _backup(bc: Any, state_dir: str, media: str, volumes: list[str], wanted: BackupType,
            base: Image | None, chain_types: list[str], keep_snapshot: bool, with_writers: bool,
            progress: Progress | None, direct: bool) -> BackupOutcome:
    known = {v["name"]: v for v in bc.volumes()}
    missing = [v for v in volumes if v not in known]
    if missing:
        raise BackupRefused(f"no volume {', '.join(missing)}")
    roots = {v: known[v]["mount"] for v in volumes}
    if with_writers:
        context = SnapshotContext.CLIENT_ACCESSIBLE_WRITERS if keep_snapshot else SnapshotContext.BACKUP
    else:
        context = SnapshotContext.CLIENT_ACCESSIBLE if keep_snapshot else SnapshotContext.FILE_SHARE_BACKUP
    bc.set_context(context)
    wmds: dict[str, WriterMetadata] = bc.gather_writer_metadata() if with_writers else {}
    chosen = select_components(wmds, roots, wanted, chain_types)
    for item in chosen:
        bc.add_component(item.instance_id, item.writer_id, item.type_value, item.logical_path, item.name)
    bc.set_backup_state(True, False, wanted, True)
    base_doc = _base_document(base)
    if base_doc is not None:
        for writer, component in base_doc.iter_components():
            mine = bc.document.get_component(writer.instance_id, component.logical_path, component.name)
            if mine is not None and component.backup_stamp:
                bc.set_previous_backup_stamp(str(writer.instance_id), component.logical_path, component.name,
                                             component.backup_stamp)
    live: set[str] = set()
    for volume in volumes:
        counted = [(s, item.effective) for item in chosen
                   for s in specs_for_type(item.specs, item.effective.value)
                   if locate(s.alternate_path or s.path, {volume: roots[volume]}) is not None]
        if counted and not any(FileSpecBackupType(s.backup_type_mask).snapshot_required(kind)
                               for s, kind in counted):
            live.add(volume)
    set_id = bc.start_snapshot_set()
    try:
        bc.prepare_for_backup()
        _check_results(bc.last_results, "PrepareForBackup")
        snapshots: list[dict[str, Any]] = []
        for volume in volumes:
            if volume not in live:
                bc.add_to_snapshot_set(volume)
        if len(live) < len(volumes):
            reply = bc.do_snapshot_set()
            snapshots = list(reply["snapshots"])
        outcome = _write_image(bc, state_dir, media, volumes, wanted, base, base_doc, chosen, wmds, roots,
                               live, snapshots, set_id, progress, direct)
    except BaseException:
        try:
            bc.abort_backup()
        except RequesterError:
            pass
        raise
    if snapshots and not keep_snapshot:
        bc.delete_snapshots(set_id)
    bc.backup_complete()
    bc.gather_writer_status()
    return outcome


def _check_results(results: Sequence[Mapping[str, Any]], event: str) -> None:
    failed = [r for r in results if r.get("ok") is False]
    if failed:
        first = failed[0]
        raise BackupJobError(f"writer {first.get('writer_name')!r} failed {event}: "
                             f"{first.get('message') or first.get('failure')}")


def _write_image(bc: Any, state_dir: str, media: str, volumes: list[str], wanted: BackupType,
                 base: Image | None, base_doc: BackupComponentsDocument | None, chosen: list[Chosen],
                 wmds: Mapping[str, WriterMetadata], roots: Mapping[str, str], live: set[str],
                 snapshots: list[dict[str, Any]], set_id: str, progress: Progress | None,
                 direct: bool) -> BackupOutcome:
    sources = {s["volume"]: s["path"] for s in snapshots}
    sources.update({volume: roots[volume] for volume in live})
    last_ns = 0
    if base_doc is not None and base_doc.snapshot_set is not None:
        last_ns = base_doc.snapshot_set.creation_time
    elif base is not None:
        last_ns = _created_ns(base)
    planned = build_plans(chosen, bc.document, wmds, roots, sources, base is not None, last_ns)
    for warning in planned.warnings:
        log.warning("%s", warning)
    info: dict[str, dict[str, Any]] = {v: {"mount": roots[v]} for v in volumes}
    for snap in snapshots:
        info[snap["volume"]].update({"snapshot_id": snap["id"], "seq": snap["seq"]})
    for volume in live:
        info[volume]["live"] = True
    hints = _Hints()
    if base is not None and snapshots:
        alive = {p.snapshot_id for p in bc.query_snapshots()}
        hints = _diff_hints(state_dir, base, snapshots, alive, direct)
    by_ident = {(item.key, item.instance_id): item for item in chosen}

    def failed(volume: str, path: str, component: str, writer: str, message: str) -> None:
        item = by_ident.get((component, writer))
        text = f"{volume}:{path}: {message}"
        log.error("component %r of writer %s: %s", component, writer, text)
        if item is not None:
            item.failures.append(text)

    def documents() -> Documents:
        for item in chosen:
            message = "; ".join(item.failures)
            bc.set_backup_succeeded(item.instance_id, item.writer_id, item.type_value, item.logical_path,
                                    item.name, not item.failures, message[:4000])
        selected = {item.instance_id for item in chosen}
        return Documents(bc.save_as_xml(), [wmds[i].to_xml() for i in wmds if i in selected])

    summary = [{"writer": item.writer_name, "instance_id": item.instance_id, "component": item.key,
                "type": item.effective.value} for item in chosen]
    try:
        image_id = backup(sources, media, wanted.value, base.id if base else None, hints.changes,
                          set_id=set_id, plans=planned.plans, components=summary, volume_info=info,
                          progress=progress, failures=failed, late_documents=documents,
                          readers=hints.readers)
    finally:
        hints.close()
    for entry, item in zip(summary, chosen, strict=True):
        entry["succeeded"] = not item.failures
        if item.failures:
            entry["failures"] = item.failures
    return BackupOutcome(image_id, set_id, wanted.value, base.id if base else None, summary, sorted(live),
                         sorted(hints.changes), planned.warnings, sorted(hints.readers))


# ---- restore ---------------------------------------------------------------------------------------


class _WriterRestore:
    """The restore hooks: PreRestore / PostRestore with the writers of each image's saved BCD."""

    def __init__(self, bc: Any, chain: list[Image], registered: set[str],
                 new_targets: Sequence[tuple[str, str]]) -> None:
        self.bc = bc
        self.chain = chain
        self.registered = registered
        self.new_targets = list(new_targets)
        self.docs = [_base_document(image) for image in chain]
        self.failures: list[str] = []
        self.warnings: list[str] = []

    def _roots(self, image: Image) -> dict[str, str]:
        return {v["name"]: v["mount"] for v in image.info.volumes if isinstance(v.get("mount"), str)}

    def _later(self, index: int, instance: uuid.UUID, logical_path: str, name: str) -> bool:
        return any(doc is not None and doc.get_component(instance, logical_path, name) is not None
                   for doc in self.docs[index + 1:])

    def before_image(self, image: Image, index: int, last: bool, state: ChainState) -> ImageSteps:
        doc = self.docs[index]
        if doc is None or not doc.writers:
            return ImageSteps()
        gone = [str(w.instance_id) for w in doc.writers if str(w.instance_id) not in self.registered]
        for instance in gone:
            self.warnings.append(f"image {image.id}: writer instance {instance} is not registered: "
                                 "its components are restored without it")
        doc.writers = [w for w in doc.writers if str(w.instance_id) in self.registered]
        if not doc.writers:
            return ImageSteps()
        self.bc.load_from_xml(doc.to_xml())
        self.bc.set_restore_state(RestoreType.BY_COPY)
        schemas = self._schemas(image)
        roots = self._roots(image)
        for writer, component in list(self.bc.document.iter_components()):
            args = (str(writer.instance_id), str(writer.writer_id), component.type, component.logical_path,
                    component.name)
            self.bc.set_selected_for_restore(*args, True)
            self.bc.set_additional_restores(*args, self._later(index, writer.instance_id,
                                                               component.logical_path, component.name))
            for source, dest in self.new_targets:
                if not self._component_under(image, writer.instance_id, component, source):
                    continue
                if not schemas.get(str(writer.instance_id), BackupSchema.UNDEFINED) \
                        & BackupSchema.WRITER_SUPPORTS_NEW_TARGET:
                    raise BackupJobError(f"writer instance {writer.instance_id} does not support new targets "
                                         f"(component {component.full_path!r})")
                self.bc.add_new_target(*args, source, "*", True, dest)
        self.bc.pre_restore()
        for result in self.bc.last_results:
            if result.get("ok") is False:
                raise BackupJobError(f"writer {result.get('writer_name')!r} failed PreRestore: "
                                     f"{result.get('message') or result.get('failure')}: nothing of image "
                                     f"{image.id} was written")
        return self._steps(image, roots, state)

    def _schemas(self, image: Image) -> dict[str, BackupSchema]:
        out: dict[str, BackupSchema] = {}
        for name in image.info.wmds:
            try:
                wmd = WriterMetadata.from_xml(image.document(name))
            except DocumentError:
                continue
            out[str(wmd.identity.instance_id)] = wmd.backup_schema
        return out

    def _component_under(self, image: Image, instance: uuid.UUID, component: ComponentState,
                         root: str) -> bool:
        for name in image.info.wmds:
            try:
                wmd = WriterMetadata.from_xml(image.document(name))
            except DocumentError:
                continue
            if wmd.identity.instance_id != instance:
                continue
            found = wmd.get_component(component.logical_path, component.name)
            if found is not None:
                specs = list(found.all_file_specs)
                for sub in wmd.subcomponents(found):
                    specs.extend(sub.all_file_specs)
                return any(statedir.is_within(os.path.normpath(s.path), os.path.normpath(root))
                           for s in specs)
        return False

    def _steps(self, image: Image, roots: Mapping[str, str], state: ChainState) -> ImageSteps:
        steps = ImageSteps()
        for writer, component in self.bc.document.iter_components():
            for target in component.new_targets:
                src, dst = locate(target.path, roots), locate(target.alternate_path, roots)
                if src is None or dst is None or src[0] != dst[0]:
                    raise BackupJobError(f"new target {target.path} -> {target.alternate_path}: "
                                         "both must lie on one volume of the image")
                steps.relocations.append(Relocation(src[0], src[1], target.filespec, target.recursive, dst[1],
                                                    component.full_path, str(writer.instance_id)))
            if component.directed_targets and component.restore_target not in (RestoreTarget.DIRECTED,
                                                                               RestoreTarget.ORIGINAL):
                self.warnings.append(f"component {component.full_path!r}: directed targets with restore "
                                     f"target {component.restore_target.value}")
            for directed in component.directed_targets:
                steps.directed.append(self._directed(directed, roots, state))
        return steps

    def _directed(self, directed: Any, roots: Mapping[str, str], state: ChainState) -> Directed:
        source = os.path.join(directed.source_path, directed.source_filename)
        dest = os.path.join(directed.destination_path, directed.destination_filename)
        label = f"directed target {source} -> {dest}"
        if ranges_file_path(directed.source_ranges) or ranges_file_path(directed.destination_ranges):
            raise BackupJobError(f"{label}: ranges files in directed targets are not supported")
        src, dst = locate(source, roots), locate(dest, roots)
        if src is None or dst is None:
            raise BackupJobError(f"{label}: not on a volume of the image")
        entry = state.volume(src[0]).entries.get(src[1])
        if entry is None or entry.record.kind != "file":
            raise BackupJobError(f"{label}: the source is not a file of the backup")
        try:
            source_ranges = parse_range_string(directed.source_ranges, file_size=entry.record.size)
            dest_ranges = parse_range_string(directed.destination_ranges)
            check_directed_ranges(source_ranges, dest_ranges)
        except RangeError as exc:
            raise BackupJobError(f"{label}: {exc}") from None
        return Directed(src[0], src[1], tuple(source_ranges), dst[0], dst[1], tuple(dest_ranges))

    def after_image(self, image: Image, index: int, last: bool) -> None:
        doc = self.docs[index]
        if doc is None or not doc.writers:
            return
        self.bc.post_restore()
        for result in self.bc.last_results:
            if result.get("ok") is False:
                self.failures.append(f"writer {result.get('writer_name')!r} failed PostRestore after image "
                                     f"{image.id}: {result.get('message') or result.get('failure')}")


def run_restore(state_dir: str | None, media: str, image_id: str, to: str | None = None, *,
                targets: Mapping[str, str] | None = None, volumes: Sequence[str] | None = None,
                new_targets: Sequence[tuple[str, str]] = (), with_writers: bool = True,
                progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[RestoreResult, list[str]]:
    """Restore `image_id` and its chain with the writers of its saved BCDs; returns the engine's result
    and the writers' PostRestore failures."""
    chain = chain_images(media, image_id)
    uses_writers = with_writers and any(image.info.bcd is not None for image in chain)
    if new_targets and not uses_writers:
        raise BackupRefused("new targets need the writers of the image (it has no writer components)")
    if not uses_writers:
        return restore(media, image_id, to, targets=targets, volumes=volumes, progress=progress), []
    bc = SyncBackupComponents(state_dir)
    try:
        bc.set_context(SnapshotContext.BACKUP)
        registered = set(bc.gather_writer_metadata())
        hooks = _WriterRestore(bc, chain, registered, new_targets)
        result = restore(media, image_id, to, targets=targets, volumes=volumes, progress=progress,
                         hooks=hooks)
        result.warnings.extend(hooks.warnings)
        return result, hooks.failures
    except DocumentError as exc:
        raise BackupJobError(str(exc)) from None
    finally:
        bc.close()


__all__ = ["BackupJobError", "BackupOutcome", "BackupRefused", "RestoreError", "build_plans",
           "effective_type", "locate", "run_backup", "run_restore", "select_components"]
