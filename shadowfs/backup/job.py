"""A VSS backup job: the requester's sequence around the backup engine.

```
 run_backup: gather_writer_metadata -> add_component (per writer, effective type) -> set_backup_state
   -> set_previous_backup_stamp (every component of the base image's saved BCD) -> start_snapshot_set
   -> prepare_for_backup -> add_to_snapshot_set (volumes that need a snapshot) -> do_snapshot_set
   -> file sets from the snapshot (fileset) + differenced + partial files (the BCD after PostSnapshot)
   -> backup.backup (failures -> set_backup_succeeded(False, msg)) -> BCD and WMDs in the image
   -> backup_complete
```

One job: run the VSS calls of one backup in order, through the requester
library (`vss.requester.SyncBackupComponents`), around the plans of
`backup.plan` and the image the backup engine writes (`backup.engine.backup`).

Invariants:
- Any failure after `start_snapshot_set` calls `abort_backup` before the
  error propagates; `backup_complete` is sent only once the image is written.
- A volume whose counted specs all lack the snapshot-required bit of the type
  is left out of the snapshot set and read live (if no volume needs a
  snapshot, no set is made).
- The snapshot set is deleted after the image is written, unless it is to be
  kept (``keep_snapshot``).
- A component file that cannot be read fails its component: the file and the
  reason are logged and recorded with `set_backup_succeeded(False, msg)`; the
  image still completes.
- The fast path (diff-area candidates since the base image's snapshot) is
  used only where that snapshot still exists; reading a snapshot in this
  process (by inode) only where the daemon hands over the volume's backing
  directory and opening by inode is allowed; otherwise every byte comes
  through the snapshot browser. Every diff area and descriptor opened for it
  is closed when the image is done.

Errors (`shadowfs.errors`): `BackupRefused` (exit 2) for a job refused before it
starts (an unknown type or volume, no base image), `BackupJobError` (exit 1)
for what fails on the way (a writer's answer, bad ranges, unreadable
documents); the requester's errors pass through as they are, so a daemon that
is not running stays "unreachable" (exit 3) for the CLI. No CLI import here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NotRequired, TypedDict

from shadowfs import statedir
from shadowfs.backup.engine import BackupRequest, Documents, Progress, VolumeInfo, VolumeSource, backup
from shadowfs.backup.fileset import specs_for_type
from shadowfs.backup.plan import (
    BackupJobError,
    Chosen,
    base_document,
    build_plans,
    locate,
    select_components,
)
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import Seq
from shadowfs.documents import (
    BackupComponents as BackupComponentsDocument,
)
from shadowfs.documents import (
    BackupType,
    FileSpecBackupType,
    SnapshotContext,
    WriterMetadata,
)
from shadowfs.errors import BackupRefused, ShadowfsError
from shadowfs.ipc.client import request_fds
from shadowfs.ipc.frames import close_fds
from shadowfs.ipc.vss_messages import (
    CreatedSnapshot,
    WriterResult,
)
from shadowfs.media import Image, find_base, open_image
from shadowfs.snapshot import changes
from shadowfs.snapshot.readers import ViewReader
from shadowfs.snapshot.view import LiveObjects, SnapshotView
from shadowfs.vss.requester import RequesterError, SyncBackupComponents

log = logging.getLogger(__name__)

_TYPES = {"full": BackupType.FULL, "incremental": BackupType.INCREMENTAL,
          "differential": BackupType.DIFFERENTIAL, "log": BackupType.LOG, "copy": BackupType.COPY}


class _Hints:
    """Per volume: the diff area's candidates since the base image's snapshot, and a reader of
    the new snapshot in this process (by inode, no path walk, no round trip through the snapshot
    browser) where the daemon hands over the volume's backing directory. Close after use."""

    def __init__(self) -> None:
        self.changes: dict[str, changes.ObjectChanges] = {}
        self.readers: dict[str, ViewReader] = {}

    def close(self) -> None:
        for reader in self.readers.values():
            reader.view.live.close()
            os.close(reader.view.live.root_fd)
        for hint in self.changes.values():
            hint.area.close()


def _diff_hints(state_dir: str, base: Image | None, snapshots: Sequence[CreatedSnapshot],
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
            hints.changes[snap["volume"]] = changes.scan(area, Seq(recorded["seq"]), Seq(int(snap["seq"])))
        except DiffAreaError as exc:
            log.info("volume %s: %s; comparing every file with the base image instead", snap["volume"], exc)
            area.close()
            continue
        reader = _direct_reader(state_dir, snap["volume"], area, Seq(int(snap["seq"]))) if direct else None
        if reader is not None:
            hints.readers[snap["volume"]] = reader
    return hints


def _direct_reader(state_dir: str, volume: str, area: DiffArea, seq: Seq) -> ViewReader | None:
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
    area.attach_backing(fds[0])  # a block file on the volume is reached through it
    return ViewReader(SnapshotView(area, live, seq))


def _created_ns(image: Image) -> int:
    return int(datetime.fromisoformat(image.info.created.replace("Z", "+00:00")).timestamp() * 1e9)


class ComponentOutcome(TypedDict):
    """One selected component of a backup (image.json's `components`, `backup --json`): `succeeded`
    and, when it failed, `failures` are added once the image is written."""

    writer: str
    instance_id: str
    component: str
    type: str  # the effective backup type the writer got
    succeeded: NotRequired[bool]
    failures: NotRequired[list[str]]


@dataclass
class BackupOutcome:
    """What `run_backup` did."""

    image: str
    set_id: str
    type: str
    base: str | None
    components: list[ComponentOutcome]
    live_volumes: list[str]
    fast_path: list[str]
    warnings: list[str]
    direct: list[str] = field(default_factory=list)  # volumes whose snapshot was read in-process


@dataclass(frozen=True)
class _Job:
    """What `run_backup` was asked to do, resolved: what every step of the job reads."""

    state_dir: str
    media: str
    volumes: list[str]
    type: BackupType
    base: Image | None
    chain_types: list[str]  # the types of the base image's chain, oldest first
    keep_snapshot: bool
    with_writers: bool
    progress: Progress | None
    direct: bool


@dataclass(frozen=True)
class _Taken:
    """What the VSS steps before the image made: the components chosen, the writers' metadata,
    each volume's live root and whether it is read live, and the snapshot set."""

    set_id: str
    chosen: list[Chosen]
    wmds: Mapping[str, WriterMetadata]
    base_doc: BackupComponentsDocument | None
    roots: Mapping[str, str]
    live: set[str]
    snapshots: list[CreatedSnapshot]


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
    job = _Job(state_dir, media, list(volumes), wanted, base, chain_types, keep_snapshot, with_writers,
               progress, direct)
    bc = SyncBackupComponents(state_dir)
    try:
        return _backup(bc, job)
    finally:
        bc.close()


def _backup(bc: SyncBackupComponents, job: _Job) -> BackupOutcome:
    volumes, wanted, keep_snapshot = job.volumes, job.type, job.keep_snapshot
    known = {v["name"]: v for v in bc.volumes()}
    missing = [v for v in volumes if v not in known]
    if missing:
        raise BackupRefused(f"no volume {', '.join(missing)}")
    roots = {v: known[v]["mount"] for v in volumes}
    if job.with_writers:
        context = SnapshotContext.CLIENT_ACCESSIBLE_WRITERS if keep_snapshot else SnapshotContext.BACKUP
    else:
        context = SnapshotContext.CLIENT_ACCESSIBLE if keep_snapshot else SnapshotContext.FILE_SHARE_BACKUP
    bc.set_context(context)
    wmds: dict[str, WriterMetadata] = bc.gather_writer_metadata() if job.with_writers else {}
    chosen = select_components(wmds, roots, wanted, job.chain_types)
    for item in chosen:
        bc.add_component(item.instance_id, item.writer_id, item.type_value, item.logical_path, item.name)
    bc.set_backup_state(True, False, wanted, True)
    base_doc = base_document(job.base)
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
        snapshots: list[CreatedSnapshot] = []
        for volume in volumes:
            if volume not in live:
                bc.add_to_snapshot_set(volume)
        if len(live) < len(volumes):
            reply = bc.do_snapshot_set()
            snapshots = list(reply["snapshots"])
        taken = _Taken(set_id, chosen, wmds, base_doc, roots, live, snapshots)
        outcome = _write_image(bc, job, taken)
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


def _check_results(results: Sequence[WriterResult], event: str) -> None:
    failed = [r for r in results if r.get("ok") is False]
    if failed:
        first = failed[0]
        raise BackupJobError(f"writer {first.get('writer_name')!r} failed {event}: "
                             f"{first.get('message') or first.get('failure')}")


def _write_image(bc: SyncBackupComponents, job: _Job, taken: _Taken) -> BackupOutcome:
    base, base_doc, chosen, wmds, roots = job.base, taken.base_doc, taken.chosen, taken.wmds, taken.roots
    sources = {s["volume"]: s["path"] for s in taken.snapshots}
    sources.update({volume: roots[volume] for volume in taken.live})
    last_ns = 0
    if base_doc is not None and base_doc.snapshot_set is not None:
        last_ns = base_doc.snapshot_set.creation_time
    elif base is not None:
        last_ns = _created_ns(base)
    planned = build_plans(chosen, bc.document, wmds, roots, sources, base is not None, last_ns)
    for warning in planned.warnings:
        log.warning("%s", warning)
    info: dict[str, VolumeInfo] = {v: {"mount": roots[v]} for v in job.volumes}
    for snap in taken.snapshots:
        info[snap["volume"]].update({"snapshot_id": snap["id"], "seq": snap["seq"]})
    for volume in taken.live:
        info[volume]["live"] = True
    hints = _Hints()
    if base is not None and taken.snapshots:
        alive = {p.snapshot_id for p in bc.query_snapshots()}
        hints = _diff_hints(job.state_dir, base, taken.snapshots, alive, job.direct)
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

    summary: list[ComponentOutcome] = [{"writer": item.writer_name, "instance_id": item.instance_id,
                                        "component": item.key, "type": item.effective.value}
                                       for item in chosen]
    volumes = {v: VolumeSource(sources[v], plan=planned.plans[v], changes=hints.changes.get(v),
                               reader=hints.readers.get(v), info=info[v]) for v in sources}
    request = BackupRequest(job.media, volumes, job.type.value, base.id if base else None,
                            set_id=taken.set_id, components=summary, late_documents=documents,
                            progress=job.progress, failures=failed)
    try:
        image_id = backup(request)
    finally:
        hints.close()
    for entry, item in zip(summary, chosen, strict=True):
        entry["succeeded"] = not item.failures
        if item.failures:
            entry["failures"] = item.failures
    return BackupOutcome(image_id, taken.set_id, job.type.value, base.id if base else None, summary,
                         sorted(taken.live), sorted(hints.changes), planned.warnings, sorted(hints.readers))


__all__ = ["BackupJobError", "BackupOutcome", "BackupRefused", "ComponentOutcome", "run_backup"]
