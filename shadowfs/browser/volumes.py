"""The volumes the snapshot browser shows, and the snapshot sets read from their diff areas.

One job: keep, per volume index, a `BrowserVolume` (its diff area, opened
read-only and lazily, and its backing root descriptor), and derive the
snapshot sets (`SnapshotSet`: every volume's snapshot sharing a set id) and
their by-time names from the snapshot records. No pyfuse3: the handlers in
`browser.ops` translate all this into FUSE replies.

Invariants:
- The snapshot records are read from the diff areas on every call of
  `ShownVolumes.snapshot_sets` (one short read transaction per volume that
  checks a signature of the snapshots database; records are decoded again,
  and the sets rebuilt, only when it changed), so new and deleted sets show
  at once without any message.
- A diff area that cannot be opened yet (its mount process has not created
  it) is tried again at most every AREA_RETRY_SECONDS, or at once after
  `retry_area_now`; each new error is logged once.
- Worker threads only get objects prepared on the trio thread (a
  `SnapshotView`; diff areas are opened only there), and every volume they
  use is pinned meanwhile: replacing the volumes retires a volume's
  environment and descriptors at once but closes them when the last pin is
  gone. Pins change on the trio thread only.
- LMDB allows one environment per process and path: a volume whose index and
  diff area are unchanged keeps its open environment when the list is
  replaced; two volumes never share a diff area.
- A set keeps the node id it was first given in this process
  (`nodes.SetNodes`).
- Node ids are `nodes.NodeId`s; `resolve` turns one into the volume, the
  `Seq` and the `BackingIno` it stands for.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shadowfs.browser.nodes import (
    MAX_VOLUME_INDEX,
    NodeId,
    SetNodes,
    link_node_of,
    set_node_of,
    split_snapshot_node,
)
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import BackingIno, Seq, SnapshotRecord
from shadowfs.snapshot.view import LiveObjects, SnapshotView

log = logging.getLogger(__name__)

AREA_RETRY_SECONDS = 1.0


def parse_created(created: str) -> tuple[str, int]:
    """The by-time name and the time in ns of a snapshot's `created` stamp."""
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return created.replace("/", "_") or "unknown", 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    seconds = int(when.timestamp())
    return (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)),
            seconds * 1_000_000_000 + when.microsecond * 1000)


def _same_path(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def _check_volume_list(volumes: Sequence[tuple[str, int, str, int]]) -> None:
    """ValueError unless indexes and diff areas are unique and every fd is a directory."""
    indexes = [index for _, index, _, _ in volumes]
    if len(set(indexes)) != len(indexes):
        raise ValueError("duplicate volume index")
    if any(not 0 < index <= MAX_VOLUME_INDEX for index in indexes):
        raise ValueError(f"volume index out of range 1..{MAX_VOLUME_INDEX}")
    if len({os.path.realpath(path) for _, _, path, _ in volumes}) != len(volumes):
        raise ValueError("two volumes share a diff area")
    for name, _, _, fd in volumes:
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        except OSError as exc:
            raise ValueError(f"volume {name}: bad backing descriptor ({exc.strerror})") from None
        if not is_dir:
            raise ValueError(f"volume {name}: backing descriptor is not a directory")


class BrowserVolume:
    """One volume as the browser sees it: its diff area (read-only) and its backing root.

    The diff area is opened lazily: a volume's mount process may not have
    created it yet when the browser learns of the volume.

    Worker threads use the volume's LMDB environment and descriptors, so the
    trio thread *pins* the volume around every offloaded call; closing it (or
    replacing its root) retires the resources at once for new callers but
    closes them only when the last pin is gone: LMDB must not close an
    environment under a running transaction, and a descriptor number must not
    be reused while a thread still reads through it. Pins change on the trio
    thread only.
    """

    def __init__(self, name: str, index: int, diff_area: str, root_fd: int) -> None:
        self.name = name
        self.index = index
        self.diff_area = diff_area
        self.root_fd = root_fd
        self.live = LiveObjects(root_fd)
        self.area: DiffArea | None = None
        self.closed = False
        self._next_try = 0.0
        self._last_error = ""
        self._signature: tuple[int, bytes, bytes] | None = None
        self._records: list[SnapshotRecord] = []
        self.pins = 0
        self._retired: list[Callable[[], None]] = []
        self.ensure_area()

    def pin(self) -> None:
        self.pins += 1

    def unpin(self) -> None:
        self.pins -= 1
        if self.pins == 0:
            retired, self._retired = self._retired, []
            for close in retired:
                close()

    def _retire(self, close: Callable[[], None]) -> None:
        """Run `close` now, or when the last worker thread using this volume is done."""
        if self.pins == 0:
            close()
        else:
            self._retired.append(close)

    def ensure_area(self) -> DiffArea | None:
        """The open diff area, opening it now if it could not be opened before."""
        if self.area is not None or self.closed:
            return self.area
        now = time.monotonic()
        if now < self._next_try:
            return None
        try:
            self.area = DiffArea.open(self.diff_area, readonly=True, backing_fd=self.root_fd)
        except DiffAreaError as exc:
            self._next_try = now + AREA_RETRY_SECONDS
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.warning("volume %s: %s", self.name, exc)
        return self.area

    def retry_area_now(self) -> None:
        """Let the next `ensure_area` try to open the diff area without waiting."""
        self._next_try = 0.0

    def replace_root(self, root_fd: int) -> None:
        """Serve the backing data from a new root descriptor (the old one is closed once
        no worker thread uses it)."""
        old_live, old_fd = self.live, self.root_fd
        self.root_fd = root_fd
        self.live = LiveObjects(root_fd)
        self._retire(lambda: _close_live(old_live, old_fd))

    def snapshots(self) -> tuple[tuple[int, bytes, bytes], list[SnapshotRecord]]:
        """(signature, records) of the volume's snapshots, read now.

        Sequence numbers only grow and a record never changes, so (count,
        first key, last key) of the snapshots database changes whenever its set
        of records does; the records are decoded again only then.
        """
        area = self.ensure_area()
        if area is None:
            return (0, b"", b""), []
        with area.read() as txn:
            cursor = txn.cursor(db=area.snapshots_db)
            first = cursor.key() if cursor.first() else b""
            last = cursor.key() if cursor.last() else b""
            signature = (txn.stat(area.snapshots_db)["entries"], first, last)
            if signature != self._signature:
                self._records = area.snapshot_list(txn)
                self._signature = signature
        return signature, self._records

    def view(self, seq: Seq) -> SnapshotView:
        area = self.ensure_area()
        if area is None or self.closed:
            raise OSError(errno.ESTALE, f"volume {self.name} is not available")
        return SnapshotView(area, self.live, seq)

    def close(self) -> None:
        """Stop serving: `view` answers ESTALE from now on; the environment and
        descriptors close once no worker thread uses them."""
        if self.closed:
            return
        self.closed = True
        live, root_fd, area = self.live, self.root_fd, self.area
        self.area = None
        self._retire(lambda: _close_live(live, root_fd))
        if area is not None:
            self._retire(area.close)


def _close_live(live: LiveObjects, root_fd: int) -> None:
    live.close()
    os.close(root_fd)


@dataclass
class SnapshotSet:
    """One snapshot set: every volume's snapshot that shares the set id."""

    set_id: str
    created: str
    created_ns: int
    time_name: str
    members: dict[str, tuple[BrowserVolume, SnapshotRecord]] = field(default_factory=dict)
    node: NodeId = NodeId(0)  # both given by `ShownVolumes.snapshot_sets`
    link_node: NodeId = NodeId(0)


def by_time_names(sets: dict[str, SnapshotSet]) -> dict[bytes, SnapshotSet]:
    """Names in by-time/: the creation time, with ".1", ".2" for later set ids at one time."""
    groups: dict[str, list[SnapshotSet]] = {}
    for entry in sets.values():
        groups.setdefault(entry.time_name, []).append(entry)
    names: dict[bytes, SnapshotSet] = {}
    for time_name, group in groups.items():
        for number, entry in enumerate(sorted(group, key=lambda e: e.set_id)):
            suffix = f".{number}" if number else ""
            names[os.fsencode(time_name + suffix)] = entry
    return names


class ShownVolumes:
    """The volumes shown, by index, and the snapshot sets of their diff areas (trio thread only)."""

    def __init__(self) -> None:
        self._volumes: dict[int, BrowserVolume] = {}
        self._set_nodes = SetNodes()
        self._sets_key: tuple[object, ...] | None = None
        self._sets: dict[str, SnapshotSet] = {}

    def replace(self, volumes: Sequence[tuple[str, int, str, int]]) -> None:
        """Show exactly these volumes: (name, index, diff area path, backing root fd).

        Takes ownership of the descriptors, also when it raises (ValueError for
        a bad list; the volumes shown then stay as they were). A volume whose
        index and diff area are unchanged keeps its open environment: LMDB
        allows one per process.
        """
        fds = [fd for *_, fd in volumes]
        created: list[BrowserVolume] = []
        try:
            _check_volume_list(volumes)
            old = dict(self._volumes)
            for name, index, path, fd in volumes:
                kept = old.get(index)
                if kept is None or not _same_path(kept.diff_area, path):
                    created.append(BrowserVolume(name, index, path, fd))
        except BaseException:
            owned = {volume.root_fd for volume in created}
            for volume in created:
                volume.close()
            for fd in fds:
                if fd not in owned:
                    os.close(fd)
            raise
        fresh = {volume.index: volume for volume in created}
        new: dict[int, BrowserVolume] = {}
        for name, index, _, fd in volumes:
            if index in fresh:
                new[index] = fresh[index]
            else:
                kept = old.pop(index)
                kept.name = name
                kept.replace_root(fd)
                # the daemon sends the list again once a volume's mount process is ready, and
                # only then is its diff area sure to exist: look for it again at once
                kept.retry_area_now()
                new[index] = kept
        for volume in old.values():
            volume.close()
        self._volumes = new
        self._sets_key, self._sets = None, {}
        log.info("showing volumes %s", ", ".join(f"{v.name}#{v.index}" for v in new.values()) or "(none)")

    def volumes(self) -> list[BrowserVolume]:
        return [self._volumes[index] for index in sorted(self._volumes)]

    def close(self) -> None:
        for volume in self._volumes.values():
            volume.close()
        self._volumes = {}
        self._sets_key, self._sets = None, {}

    def resolve(self, node: NodeId) -> tuple[BrowserVolume, Seq, BackingIno]:
        """(volume, seq, backing ino) of a snapshot node id (ESTALE when its volume is gone)."""
        index, seq, ino = split_snapshot_node(node)
        volume = self._volumes.get(index)
        if volume is None:
            raise OSError(errno.ESTALE, f"no volume with index {index}")
        return volume, seq, ino

    def snapshot_sets(self) -> dict[str, SnapshotSet]:
        """Every set, read now from the diff areas (one short read transaction per volume).

        Rebuilt only when some volume's snapshot records changed (the result is
        shared: callers never modify it).
        """
        volumes = self.volumes()
        read = [(volume, *volume.snapshots()) for volume in volumes]
        key = tuple((id(volume), signature) for volume, signature, _ in read)
        if key == self._sets_key:
            return self._sets
        sets: dict[str, SnapshotSet] = {}
        lowest: dict[str, tuple[int, Seq]] = {}
        for volume, _, records in read:
            for record in records:
                entry = sets.get(record.set_id)
                if entry is None:
                    time_name, created_ns = parse_created(record.created)
                    entry = sets[record.set_id] = SnapshotSet(record.set_id, record.created,
                                                              created_ns, time_name)
                    lowest[record.set_id] = (volume.index, record.seq)
                entry.members.setdefault(volume.name, (volume, record))
        for set_id, entry in sets.items():
            entry.node = self._set_nodes.node(set_id, *lowest[set_id])
            entry.link_node = link_node_of(entry.node)
        self._sets_key, self._sets = key, sets
        return sets

    def set_of_node(self, node: NodeId, sets: dict[str, SnapshotSet] | None = None) -> SnapshotSet:
        """The set of a set directory's node id (ESTALE when it was deleted).

        `sets` saves re-reading the snapshot records when many nodes are asked at once.
        """
        set_id = self._set_nodes.set_id(node)
        entry = None if set_id is None else (self.snapshot_sets() if sets is None else sets).get(set_id)
        if entry is None:
            raise OSError(errno.ESTALE, "snapshot set was deleted")
        return entry

    def set_of_link(self, node: NodeId, sets: dict[str, SnapshotSet] | None = None) -> SnapshotSet:
        """The set of a by-time symlink's node id (ESTALE when it was deleted)."""
        return self.set_of_node(set_node_of(node), sets)




def open_one_snapshot(diff_area: str, seq: Seq, backing_fd: int) -> SnapshotView:
    """A view of snapshot `seq` alone (`browser.exposed`): the diff area opened read-only, the
    volume's backing root `backing_fd` (kept open by the caller). DiffAreaError if the diff area
    cannot be opened or holds no such snapshot; `close_one_snapshot` undoes it."""
    area = DiffArea.open(diff_area, readonly=True)
    try:
        with area.read() as txn:
            if not area.has_snapshot(txn, seq):
                raise DiffAreaError(f"no snapshot with sequence {seq} in {diff_area}")
        area.attach_backing(backing_fd)  # a blocks.dat kept on the volume is reached through it
        return SnapshotView(area, LiveObjects(backing_fd), seq)
    except BaseException:
        area.close()
        raise


def close_one_snapshot(view: SnapshotView) -> None:
    view.live.close()
    view.area.close()


__all__ = ["AREA_RETRY_SECONDS", "BrowserVolume", "ShownVolumes", "SnapshotSet", "by_time_names",
           "close_one_snapshot", "open_one_snapshot", "parse_created"]
