"""Backup plans from writers' documents: which files each volume's image holds, and how.

One job: turn the writers' metadata (WMDs) and the requester's BCD into the
backup engine's per-volume plans (`backup.engine.VolumePlan`): which
components are chosen (`select_components`), the backup type each writer
really gets (`effective_type`), and what each file of the source trees
becomes (`build_plans`: backed up whole, kept from the base image, read from
an alternate location, partial ranges, excluded, skipped). Writer paths are
absolute paths of the live namespace (a volume's mount); plans hold paths
relative to the volume root.

Invariants:
- No daemon, no requester, no media writes: the only I/O is reading the
  source trees it is given (a walk of each volume that matters, and the
  ranges files of partial files) and the documents of a base image.
- Every refusal (bad partial-file ranges, a ranges file on another volume)
  is a BackupJobError raised before anything is written.

Rules (vss §8, §10-§13):
- exclusions of every writer win, over components, partial files and data
  outside components;
- a spec counts only if its backup-type mask has the bit of the writer's
  effective type (a writer whose schema lacks the requested type, or an
  exclusive incremental/differential writer whose chain mixes the two, gets
  a full backup: its files are read whole); files only uncounted specs name
  are not backed up and not deleted from the chain either;
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
  ignored with a warning.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shadowfs import statedir
from shadowfs.backup.engine import HIDDEN, VolumePlan
from shadowfs.backup.fileset import ComponentFiles, Spec, build_file_sets, spec_covers, specs_for_type
from shadowfs.documents import (
    BackupComponents as BackupComponentsDocument,
)
from shadowfs.documents import (
    BackupSchema,
    BackupType,
    Component,
    ComponentState,
    ComponentType,
    DocumentError,
    FileSpec,
    PartialFile,
    RangeError,
    WriterMetadata,
    parse_range_string,
    ranges_file_path,
    read_ranges_fd,
)
from shadowfs.documents.rules import full_path
from shadowfs.errors import BackupJobError
from shadowfs.media import Image
from shadowfs.snapshot.tree import Meta, SourceTree

UNCOUNTED = "\0uncounted\0"   # prefix of pseudo components: files only uncounted specs name


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
    type_value: ComponentType
    logical_path: str
    name: str
    specs: list[Spec]
    effective: BackupType
    failures: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return full_path(self.logical_path, self.name)


def _spec_of(spec: FileSpec) -> Spec:
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

        def on_volumes(component: Component) -> bool:
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
    interesting = {place[0] for spec in [s for specs in plain.values() for s in specs]
                   + [s for diffs in differenced.values() for s, _ in diffs]
                   + [s for specs in uncounted.values() for s in specs] + excluded
                   for path in (spec.path, spec.alternate_path) if path
                   for place in [locate(path, roots)] if place is not None}
    partial_files: list[tuple[str, PartialFile]] = []
    for item in chosen:
        ident = item.key + "\0" + item.instance_id
        for partial in states[ident].partial_files:
            partial_files.append((ident, partial))
            where = locate(os.path.join(partial.path, partial.filename), roots)
            if where is not None:
                interesting.add(where[0])
    plans = {volume: VolumePlan() for volume in sources}
    metas: dict[str, dict[str, Meta]] = {}
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
            read = metas[volume].get(origin[1])
            if not covered_plain and thresholds and read is not None and read.mtime_ns <= min(thresholds):
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


def _plan_partial(item: Chosen, partial: PartialFile, roots: Mapping[str, str], sources: Mapping[str, str],
                  metas: Mapping[str, Mapping[str, Meta]], plans: Mapping[str, VolumePlan],
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


def base_document(base: Image | None) -> BackupComponentsDocument | None:
    """The backup components document saved in image `base`, None if it has none."""
    if base is None or base.info.bcd is None:
        return None
    try:
        return BackupComponentsDocument.from_xml(base.document(base.info.bcd))
    except DocumentError as exc:
        raise BackupJobError(f"image {base.id}: its backup components document is unreadable: {exc}") \
            from None


__all__ = ["BackupJobError", "Chosen", "Planned", "base_document", "build_plans", "effective_type", "locate",
           "select_components"]
