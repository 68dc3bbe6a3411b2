"""The messages shadowfs processes send each other, as types: one `TypedDict` per request, reply and event.

One job: say, in one place, what every frame of every channel holds, so that
mypy checks each sender against the same shape its receiver checks::

    shadowfs CLI, jobs ──VolumeAddRequest, SnapshotCreateRequest, ...──▶ daemon (daemon.sock)
    requester (vss) ────HelloRequest, SequenceRequest, ... (ipc.vss_messages)──▶ daemon
    writer (vss) ───────WriterRegisterRequest──▶ daemon ──WriterEventRequest──▶ writer
    daemon ──HoldRequest, CommitRequest, ReleaseRequest, DeleteRequest, StopRequest──▶ mount process
           ◀──MountReadyEvent (+ its FUSE, watcher and backing-root descriptors),
              SnapshotDeletedEvent, DamageEvent───────────────────────────
    daemon ──VolumesRequest (+ one backing-root descriptor per volume),
           BrowserRefreshRequest──────────────────────────────────────▶ snapshot browser

The frame format and the envelope are `ipc.frames`: the channel adds the
request's ``"id"`` and the reply's ``"id"`` and ``"ok"``, so none of them
appear here. A reply type lists the fields of a successful reply; a refusal is
`frames.error_reply` on every channel.

Invariants:
- The wire format is these dicts as JSON, in the key order the senders write
  them; the types add nothing to a frame and take nothing from it.
- A request type says what its server checks: a field is `NotRequired` exactly
  when the server has a default for it, and its type is what the server
  accepts (parsing lives with each server: `live.control`, `browser.process`,
  `daemon.server`, `service.protocol`, `service.registry`).
- A reply type is what the server builds. Clients read the daemon's replies
  without checking them again (the daemon is trusted; its peers are not); the
  daemon checks what its children and writers reply (`service.broker.TakenSet`,
  `service.registry`).
- Sequences are plain `int` on the wire; enumerations (contexts, backup
  types, writer states and failures) travel as their string values.
- Imports nothing but `typing`: the CLI and the blocking requester import it
  at start.
- The messages of the VSS service's writers and requesters live in
  `ipc.vss_messages`, with the same rules.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class EmptyReply(TypedDict):
    """A successful reply with no fields (`{"id", "ok": true}` on the wire)."""


# --- daemon -> mount process (`live.control` serves them; `daemon.sets` sends them) ---------------------


class HoldRequest(TypedDict):
    """Flush, close the gate, drain, flush again; the hold lapses after `timeout` seconds
    (default 10; a positive number). Reply: `EmptyReply` once held."""

    op: Literal["hold"]
    timeout: NotRequired[float]


class CommitRequest(TypedDict):
    """Record the snapshot while held (non-empty strings); `release` true opens the gate in the
    same request (anything else leaves it closed). Reply: `CommitReply`."""

    op: Literal["commit"]
    snapshot_id: str
    set_id: str
    created: str
    release: NotRequired[bool]


class CommitReply(TypedDict):
    seq: int
    held_ms: NotRequired[float]  # only when the commit also opened the gate


class ReleaseRequest(TypedDict):
    """Open the gate (a hold still flushing is cancelled). Reply: `ReleaseReply`."""

    op: Literal["release"]


class ReleaseReply(TypedDict):
    held_ms: NotRequired[float]  # how long the gate was closed, if this request opened it


class DeleteRequest(TypedDict):
    """Delete snapshot `seq` (an integer) of the volume; a held one only with `force`.
    Reply: `DeleteReply`."""

    op: Literal["delete"]
    seq: int
    force: NotRequired[bool]


class SetHeldRequest(TypedDict):
    """Hold snapshot `seq` (`held`: since when, UTC) or release it (`held` null).
    Reply: `EmptyReply`."""

    op: Literal["set_held"]
    seq: int
    held: str | None


class DeleteReply(TypedDict):
    freed: int


class SetMaxRequest(TypedDict):
    """The diff area's limit in bytes (an integer >= 0; 0: no limit). Reply: `EmptyReply`."""

    op: Literal["set_max"]
    bytes: int


class MountStatusRequest(TypedDict):
    op: Literal["status"]


class MountStatusReply(TypedDict):
    volume: str
    mount: str
    newest: int | None
    held: bool
    snapshots: list[int]
    used_bytes: int
    max_bytes: int


EXIT_MOUNT_GONE = 3
"""A mount process's exit status when its mount was taken away from under it (mount it again)."""


class StopRequest(TypedDict):
    """End protection: mark what the watcher still holds, record the end, unmount, exit."""

    op: Literal["stop"]


MountRequest = (HoldRequest | CommitRequest | ReleaseRequest | DeleteRequest | SetHeldRequest
                | SetMaxRequest | MountStatusRequest | StopRequest)


class ReadyEvent(TypedDict):
    """A child is mounted and serves its control channel (the browser; mount processes send
    `MountReadyEvent`)."""

    event: Literal["ready"]


class MountReadyEvent(TypedDict):
    """A mount process protects its volume and serves this control channel: the first event on
    every channel, also to a daemon that adopts a running mount process. Its descriptors, in
    order, are named by `fds` (each present only if the process has it): "fuse" (the FUSE
    connection, for a successor to take over), "watch" (the change watcher's fanotify group)
    and "backing" (the backing root, which an in-place mount hides)."""

    event: Literal["ready"]
    pid: int
    volume: str
    mount: str
    mount_dev: str  # "major:minor" of the live mount (`linux.mounts.top_mount`)
    fds: list[str]
    took_over: bool


class DamageEvent(TypedDict):
    """Objects were found changed outside the live mount and marked damaged (design §9.3)."""

    event: Literal["damage"]
    count: int
    paths: list[str]  # the first few
    cause: str
    inos: list[int]  # the backing inodes marked (up to `DAMAGE_INOS`): the browser forgets them


class SnapshotDeletedEvent(TypedDict):
    """A mount process deleted its oldest snapshot because the diff area was full."""

    event: Literal["snapshot_deleted"]
    seq: int
    snapshot_id: str
    reason: str


# --- daemon -> snapshot browser (`browser.process` serves them; `daemon.server` sends them) -------------


class BrowserVolume(TypedDict):
    """One volume the browser shows: a name (no '/', not '.' or '..'), an index in
    1..`browser.nodes.MAX_VOLUME_INDEX`, the absolute path of its diff area."""

    name: str
    index: int
    diff_area: str


class VolumesRequest(TypedDict):
    """Replace the volumes shown; one backing-root descriptor per volume rides along, in the same
    order. Reply: `EmptyReply`."""

    op: Literal["volumes"]
    volumes: list[BrowserVolume]


class BrowserRefreshRequest(TypedDict):
    """Snapshot sets came or went: the browser re-reads them and takes back from the kernel's
    cache what is no longer true before it replies (`EmptyReply`)."""

    op: Literal["refresh"]


class BrowserForgetRequest(TypedDict):
    """Objects of `volume` were marked damaged: the browser makes the kernel forget what it
    caches of them in every snapshot (their pages and attributes), so that a read reaches
    the browser and fails with EIO. Reply: `EmptyReply`."""

    op: Literal["forget"]
    volume: str
    inos: list[int]


class BrowserStatusRequest(TypedDict):
    op: Literal["status"]


class BrowserVolumeStatus(BrowserVolume):
    diff_area_open: bool


class BrowserStatusReply(TypedDict):
    mount: str
    volumes: list[BrowserVolumeStatus]
    sets: int
    known_nodes: int  # node ids the kernel holds lookups of
    opens: int  # OPEN requests answered


# --- clients -> daemon: volumes, snapshots, status (`daemon.server`; `snapshot_create` is the service's) --


class VolumeAddRequest(TypedDict):
    """`mount` absent or null: in place over the backing directory; `max_diff_area_bytes` a number
    of bytes or a size such as "10G", absent or null: the default; `force` true: add even when
    processes hold something in the backing directory (else refused, kind "busy"; default false);
    `blocks` "volume" or "state", absent or null: "volume" when the state directory is on another
    filesystem (`statedir.VolumeTable.new_volume`). Reply: `VolumeAddReply`."""

    op: Literal["volume_add"]
    protocol: NotRequired[str]
    name: str
    backing: str
    mount: NotRequired[str | None]
    max_diff_area_bytes: NotRequired[int | str | None]
    force: NotRequired[bool]
    blocks: NotRequired[Literal["volume", "state"] | None]


class VolumeConfig(TypedDict):
    """A volume as `volumes.json` keeps it (`statedir.Volume`)."""

    name: str
    index: int
    backing: str
    mount: str
    max_diff_area_bytes: int
    created: str
    blocks: str


class VolumeAddReply(TypedDict):
    volume: VolumeConfig


class VolumeSetReply(TypedDict):
    volume: VolumeConfig


class VolumeListRequest(TypedDict):
    op: Literal["volume_list"]
    protocol: NotRequired[str]


class VolumeEntry(TypedDict):
    """One volume of `volume list --json`: its configuration, snapshots and mount process state."""

    name: str
    index: int
    backing: str
    mount: str
    snapshots: int
    diff_area_bytes: int
    max_diff_area_bytes: int
    created: str
    state: str  # the mount process: starting, running, restarting, stopped, or "not started"


class VolumeListReply(TypedDict):
    volumes: list[VolumeEntry]


class VolumeRemoveRequest(TypedDict):
    """`force` (truthy): delete the volume's snapshots too. Reply: `VolumeRemoveReply`."""

    op: Literal["volume_remove"]
    protocol: NotRequired[str]
    name: str
    force: NotRequired[bool]


class VolumeRemoveReply(TypedDict):
    removed: str
    snapshots_deleted: int


class VolumeBackingRequest(TypedDict):
    """A read-only descriptor of the volume's backing directory comes with the reply."""

    op: Literal["volume_backing"]
    protocol: NotRequired[str]
    name: str


class VolumeBackingReply(TypedDict):
    volume: str
    root_ino: int


class SnapshotListRequest(TypedDict):
    op: Literal["snapshot_list"]
    protocol: NotRequired[str]


class SnapshotEntry(TypedDict):
    """One snapshot of `snapshot list --json`."""

    id: str
    set_id: str
    volume: str
    created: str
    seq: int
    path: str  # the snapshot in the browser: <mount root>/snapshots/<set id>/<volume>
    diff_area_bytes: int
    damaged_objects: int  # objects that changed while protection had lapsed: reading them fails (EIO)
    context: str
    attributes: int  # VSS_VOLSNAP_ATTR_* bits
    label: str | None  # `snapshot create --label`, else None
    held: str | None  # held since (UTC; `snapshot hold`), else None
    exposed: list[str]  # the paths where `snapshot expose` shows it
    previous_version: str  # its @GMT-... name in by-volume/<volume>/ (Samba previous versions)


class SnapshotListReply(TypedDict):
    snapshots: list[SnapshotEntry]


class SnapshotDamageRequest(TypedDict):
    """`snapshot`: a snapshot id (not a set id). Reply: `SnapshotDamageReply`."""

    op: Literal["snapshot_damage"]
    protocol: NotRequired[str]
    snapshot: str


class DamagedObject(TypedDict):
    """One object damaged in a snapshot (design §9.3): its backing inode, its path relative to the
    volume root as found (None if unknown), why, and when it was found (UTC)."""

    ino: int
    path: str | None
    cause: str
    found: str


class SnapshotDamageReply(TypedDict):
    snapshot: str
    volume: str
    set_id: str
    damaged: list[DamagedObject]  # by inode number; the first ones only when they would not fit a frame
    total: int  # how many objects are damaged in the snapshot


class SnapshotDeleteRequest(TypedDict):
    """`snapshot`: a snapshot id or a snapshot set id; `force` true: held snapshots too (else a
    set or snapshot with a held snapshot is refused and nothing is deleted). Reply:
    `SnapshotDeleteReply`."""

    op: Literal["snapshot_delete"]
    protocol: NotRequired[str]
    snapshot: str
    force: NotRequired[bool]


class SnapshotHoldRequest(TypedDict):
    """Hold (`op` snapshot_hold) or release (snapshot_release) a snapshot, or every snapshot of
    a set. Reply: `SnapshotHoldReply`."""

    op: Literal["snapshot_hold", "snapshot_release"]
    protocol: NotRequired[str]
    snapshot: str


class SnapshotExposeRequest(TypedDict):
    """Show snapshot `snapshot` (an id, or a set id of one volume) read-only at `path`, an existing
    empty directory outside the volumes. Reply: `ExposedSnapshot`."""

    op: Literal["snapshot_expose"]
    protocol: NotRequired[str]
    snapshot: str
    path: str


class SnapshotUnexposeRequest(TypedDict):
    """End the exposure at `path`. Reply: `ExposedSnapshot`."""

    op: Literal["snapshot_unexpose"]
    protocol: NotRequired[str]
    path: str


class ExposedSnapshot(TypedDict):
    snapshot: str  # its id ("id" names the request in a reply frame)
    set_id: str
    volume: str
    path: str


class HeldSnapshot(TypedDict):
    id: str
    set_id: str
    volume: str
    held: str | None  # since when (UTC); None: released


class SnapshotHoldReply(TypedDict):
    snapshots: list[HeldSnapshot]


class KeepCounts(TypedDict):
    """restic forget's rules: how many of each to keep (0: the rule is not used)."""

    last: int
    hourly: int
    daily: int
    weekly: int
    monthly: int
    yearly: int


class SnapshotPruneRequest(TypedDict):
    """Delete the snapshots `keep` does not keep, per volume (only `volume` when given); held
    snapshots are never deleted; `dry_run`: only say what would go. Reply: `SnapshotPruneReply`."""

    op: Literal["snapshot_prune"]
    protocol: NotRequired[str]
    keep: KeepCounts
    volume: str | None
    label: NotRequired[str | None]  # only sets made with this label (the others are not looked at)
    dry_run: bool


class PrunedSnapshot(TypedDict):
    id: str
    set_id: str
    volume: str
    created: str
    reasons: list[str]  # the rules that keep it ("last", "daily", ..., "held"); empty: removed


class SnapshotPruneReply(TypedDict):
    keep: list[PrunedSnapshot]
    remove: list[PrunedSnapshot]  # deleted (or, with dry_run, to be deleted)
    dry_run: bool
    freed: int


class VolumeSetRequest(TypedDict):
    """Change a volume's settings: `max_diff_area_bytes` (bytes or a size such as "10G"; the
    oldest unheld snapshots go at once if the diff area is now over it). Reply: `VolumeSetReply`."""

    op: Literal["volume_set"]
    protocol: NotRequired[str]
    name: str
    max_diff_area_bytes: int | str


class DeletedSnapshot(TypedDict):
    id: str
    set_id: str
    volume: str


class SnapshotDeleteReply(TypedDict):
    deleted: list[DeletedSnapshot]
    freed: int


class StatusRequest(TypedDict):
    op: Literal["status"]
    protocol: NotRequired[str]


class ChildDescription(TypedDict):
    """A supervised child process (`daemon.children.Child.describe`)."""

    state: str
    pid: int | None
    restarts: int
    last_exit: int | None


class BrowserEntry(TypedDict):
    """The browser in `status`: its mount path, and its process once the daemon started it."""

    mount: str
    state: NotRequired[str]
    pid: NotRequired[int | None]
    restarts: NotRequired[int]
    last_exit: NotRequired[int | None]


class VolumeStatus(VolumeEntry):
    process: ChildDescription | None


class StatusReply(TypedDict):
    version: str
    pid: int
    state_dir: str
    mount_root: str
    ready: bool  # every volume protected and the browser serving them (READY=1 was sent)
    browser: BrowserEntry
    volumes: list[VolumeStatus]


class ShutdownRequest(TypedDict):
    """Stop the daemon; volumes stay protected unless "unprotect" (then every mount process stops)."""

    op: Literal["shutdown"]
    unprotect: bool


class ShutdownReply(TypedDict):
    stopping: bool
    unprotect: bool
