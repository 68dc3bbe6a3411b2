"""The daemon's read-only look into the volumes' diff areas: snapshot records, sizes and damage marks.

One job: answer `snapshot_list`, `volume_list`, `status` and `snapshot_damage`
from the diff areas the mount processes write (the daemon never writes one).

Invariants:
- One LMDB environment per volume, opened read-only once (LMDB allows one per
  process and path) and kept; one that cannot be opened yet (not created, or
  not yet upgraded by its mount process) is tried again at the next call.
- All access runs in worker threads under one lock, so an environment is
  never closed while another thread reads it.
- A `snapshot_damage` reply fits in a frame: objects are listed, by inode
  number, until their text reaches DAMAGE_REPLY_BUDGET bytes, and `total`
  says how many there are; texts are made valid UTF-8 (a path that is not
  is shown with backslash escapes).
"""

from __future__ import annotations

import json
import threading

from shadowfs import statedir
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import DamageRecord, Seq, previous_version_names
from shadowfs.ipc import frames
from shadowfs.ipc.messages import DamagedObject
from shadowfs.service.broker import SnapshotRow

DAMAGE_REPLY_BUDGET = frames.MAX_FRAME // 2


def _text(value: str) -> str:
    """`value` as valid UTF-8 text: a file name that is not (surrogate escapes) gets backslash escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def damaged_objects(records: list[DamageRecord],
                    budget: int = DAMAGE_REPLY_BUDGET) -> list[DamagedObject]:
    """The records as reply entries, the first ones whose JSON text stays within `budget` bytes."""
    entries: list[DamagedObject] = []
    used = 0
    for record in records:
        path = None if record.path is None else _text(record.path)
        entry: DamagedObject = {"ino": record.ino, "path": path, "cause": _text(record.cause),
                                "found": _text(record.found)}
        used += len(json.dumps(entry)) + 1  # ASCII escapes: never shorter than the frame's UTF-8
        if used > budget:
            break
        entries.append(entry)
    return entries


class DiffAreaReader:
    """Read-only access to the volumes' diff areas, one LMDB environment per volume, opened once."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._areas: dict[str, DiffArea] = {}
        self._lock = threading.Lock()

    def _area(self, name: str) -> DiffArea | None:
        area = self._areas.get(name)
        if area is None:
            try:
                area = DiffArea.open(statedir.diff_area_path(self.state_dir, name), readonly=True)
            except DiffAreaError:
                return None  # not created (or not upgraded) yet by the mount process
            self._areas[name] = area
        return area

    def read_volume(self, name: str) -> tuple[list[SnapshotRow], int]:
        """(snapshot records with their bytes and damaged objects, bytes used by the whole diff area)."""
        with self._lock:
            area = self._area(name)
            if area is None:
                return [], 0
            with area.read() as txn:
                snapshots = area.snapshot_list(txn)
                damaged = area.damage_counts(txn, [r.seq for r in snapshots])
                names = previous_version_names(snapshots)
                records: list[SnapshotRow] = [
                    {"seq": r.seq, "snapshot_id": r.snapshot_id, "set_id": r.set_id, "created": r.created,
                     "bytes": area.snapshot_bytes(txn, r.seq), "damaged": damaged[r.seq], "held": r.held,
                     "previous_version": names[r.seq]}
                    for r in snapshots]
                return records, area.used_bytes(txn)

    def snapshot_ids(self, names: list[str]) -> list[tuple[str, str, str]]:
        """(volume, set id, snapshot id) of every snapshot of volumes `names`: all a new set is
        checked against, without the sizes and damage counts `read_volume` adds."""
        found: list[tuple[str, str, str]] = []
        with self._lock:
            for name in names:
                area = self._area(name)
                if area is None:
                    continue
                with area.read() as txn:
                    found.extend((name, r.set_id, r.snapshot_id) for r in area.snapshot_list(txn))
        return found

    def read_damage(self, name: str, seq: Seq) -> tuple[list[DamagedObject], int] | None:
        """(the objects damaged in snapshot `seq` of volume `name`, as many as fit in a reply; how
        many there are), or None if the snapshot does not exist."""
        with self._lock:
            area = self._area(name)
            if area is None:
                return None
            with area.read() as txn:
                if not area.has_snapshot(txn, seq):
                    return None
                records = area.damage_list(txn, seq)
        return damaged_objects(records), len(records)

    def close(self, name: str | None = None) -> None:
        with self._lock:
            names = list(self._areas) if name is None else [name]
            for each in names:
                area = self._areas.pop(each, None)
                if area is not None:
                    area.close()


__all__ = ["DAMAGE_REPLY_BUDGET", "DiffAreaReader", "damaged_objects"]
