"""The messages shadowfs processes send each other, as types: one `TypedDict` per request, reply and event.

One job: say, in one place, what every frame of every channel holds, so that
mypy checks each sender against the same shape its receiver checks::

    shadowfs CLI, jobs ──VolumeAddRequest, SnapshotCreateRequest, ...──▶ daemon (daemon.sock)
    requester (vss) ────HelloRequest, SequenceRequest, ...─────────────▶ daemon (one session)
    writer (vss) ───────WriterRegisterRequest──▶ daemon ──WriterEventRequest──▶ writer
    daemon ──HoldRequest, CommitRequest, ReleaseRequest, DeleteRequest, StopRequest──▶ mount process
           ◀──MountReadyEvent (+ its FUSE, watcher and backing-root descriptors),
              SnapshotDeletedEvent, DamageEvent───────────────────────────
    daemon ──VolumesRequest (+ one backing-root descriptor per volume)──▶ snapshot browser

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
    """Delete snapshot `seq` (an integer) of the volume. Reply: `DeleteReply`."""

    op: Literal["delete"]
    seq: int


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


MountRequest = (HoldRequest | CommitRequest | ReleaseRequest | DeleteRequest | SetMaxRequest
                | MountStatusRequest | StopRequest)


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
    processes hold something in the backing directory (else refused, kind "busy"; default false).
    Reply: `VolumeAddReply`."""

    op: Literal["volume_add"]
    protocol: NotRequired[str]
    name: str
    backing: str
    mount: NotRequired[str | None]
    max_diff_area_bytes: NotRequired[int | str | None]
    force: NotRequired[bool]


class VolumeConfig(TypedDict):
    """A volume as `volumes.json` keeps it (`statedir.Volume`)."""

    name: str
    index: int
    backing: str
    mount: str
    max_diff_area_bytes: int
    created: str


class VolumeAddReply(TypedDict):
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
    """`snapshot`: a snapshot id or a snapshot set id. Reply: `SnapshotDeleteReply`."""

    op: Literal["snapshot_delete"]
    protocol: NotRequired[str]
    snapshot: str


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


# --- writers <-> daemon (`service.protocol` checks, `service.registry` serves; `vss.writer` sends) ------


class WriterIdentityFields(TypedDict):
    """Who a writer is: UUIDs in canonical form, names, its usage type (`UsageType` value)."""

    class_id: str
    instance_id: str
    instance_name: str
    writer_name: str
    usage_type: str


class WriterRegisterRequest(TypedDict):
    """A connection becomes a writer. UUIDs for the ids, a non-empty writer name (at most 256
    characters, as the instance name, default ""), a `UsageType` value (default USER_DATA), a
    freeze timeout in seconds (default 60). Reply: `WriterRegisterReply`."""

    op: Literal["writer_register"]
    protocol: str
    class_id: str
    instance_id: str
    instance_name: NotRequired[str]
    writer_name: str
    usage_type: NotRequired[str]
    freeze_timeout: NotRequired[float]


class LastFailure(TypedDict):
    event: str
    failure: str | None
    message: str
    time: str


class WriterDescription(WriterIdentityFields):
    """A registered (or departed) writer: `writers` and `gather_writer_status` list these."""

    pid: int
    connected: bool
    registered: str
    freeze_timeout: float
    state: str
    failure: str | None
    last_event: str | None
    last_failure: LastFailure | None
    paths: list[str] | None  # what it touches, from its last Identify
    session: str | None  # the session that claimed it for a sequence


class WriterRegisterReply(TypedDict):
    protocol: str
    writer: WriterDescription


class EventPayload(TypedDict):
    """What every writer event carries (`service.broker.Broker.payload`); BackupShutdown at the
    end of a session carries only the session and no volumes."""

    session: str
    context: NotRequired[str]
    backup_type: NotRequired[str]
    partial_file_support: NotRequired[bool]
    volumes: list[str]  # the roots (backing and mount paths) of the set's volumes
    bcd: NotRequired[str | None]  # the requester's Backup Components Document, XML


class WriterEventRequest(EventPayload):
    """Daemon -> writer, on the writer's own connection. Reply: `WriterEventReply` within
    `timeout` seconds."""

    op: Literal["writer_event"]
    event: str  # a `service.protocol.Event` value
    timeout: float


class WriterEventReply(TypedDict):
    """What a writer did: `failure` a `WriterFailure` value (default non_retryable), `components`
    its part of the BCD (XML), `metadata` its WMD (XML, Identify), `paths` what it touches."""

    status: Literal["ok", "failed"]
    failure: NotRequired[str]
    message: NotRequired[str]
    components: NotRequired[str]
    metadata: NotRequired[str]
    paths: NotRequired[list[str]]


# --- requesters <-> daemon (`service.core` and `service.broker` serve; `vss.requester` sends) ---------


class HelloRequest(TypedDict):
    op: Literal["hello"]
    protocol: str
    role: NotRequired[str]


class Limits(TypedDict):
    max_frame: int
    max_in_flight: int
    max_volumes_per_set: int
    max_snapshots_per_volume: int
    default_freeze_timeout: float


class HelloReply(TypedDict):
    protocol: str
    version: str
    limits: Limits


SequenceOp = Literal["gather_writer_metadata", "prepare_for_backup", "backup_complete", "abort_backup",
                     "pre_restore", "post_restore"]


class SequenceFields(TypedDict):
    """What a requester's call tells the writers of its backup (`service.broker.Broker.payload`):
    a session name of at most 64 characters (default: the connection's), a `SnapshotContext` and a
    `BackupType` value, whether it handles partial files, its BCD (XML)."""

    session: NotRequired[str]
    context: NotRequired[str]
    backup_type: NotRequired[str]
    partial_file_support: NotRequired[bool]
    bcd: NotRequired[str | None]


class SequenceRequest(SequenceFields):
    """A requester call that sends one event to writers. `writers`: instance ids (default: those
    the session claimed); `timeout` in seconds (default 120). Reply: `WriterResultsReply`
    (`MetadataReply` for gather_writer_metadata)."""

    op: SequenceOp
    protocol: NotRequired[str]
    writers: NotRequired[list[str]]
    timeout: NotRequired[float]


class WriterResult(WriterIdentityFields):
    """What one writer did with one event (`service.registry.Outcome`)."""

    event: str
    ok: bool
    state: str
    failure: str | None
    message: str
    components: str | None  # its part of the BCD, XML


class MetadataResult(WriterResult):
    metadata: str | None  # its WMD, XML


class WriterResultsReply(TypedDict):
    writers: list[WriterResult]


class MetadataReply(TypedDict):
    writers: list[MetadataResult]


class SnapshotCreateRequest(SequenceFields):
    """Take a snapshot set (the CLI and requesters). `volumes`: 1..64 distinct names; `context` a
    `SnapshotContext` value (default client_accessible_writers); `writers`: true, false or instance
    ids (default: whether the context involves writers); timeouts in seconds; `set_id` and
    `snapshot_ids` (volume -> id) UUIDs the requester gave out. Reply: `SnapshotCreateReply`."""

    op: Literal["snapshot_create"]
    protocol: NotRequired[str]
    volumes: list[str]
    writers: NotRequired[bool | list[str]]
    freeze_timeout: NotRequired[float]
    event_timeout: NotRequired[float]
    set_id: NotRequired[str]
    snapshot_ids: NotRequired[dict[str, str]]


class CreatedSnapshot(TypedDict):
    id: str
    volume: str
    seq: int
    path: str


class SnapshotCreateReply(TypedDict):
    set_id: str
    created: str
    context: str
    attributes: int
    snapshots: list[CreatedSnapshot]
    held_ms: dict[str, float]  # volume -> how long its changes were held
    writers: list[WriterResult]  # their PostSnapshot


class SnapshotPropertiesRequest(TypedDict):
    """`snapshot`: a snapshot id or a set id (all of its snapshots). Reply: `PropertiesReply`."""

    op: Literal["snapshot_properties"]
    protocol: NotRequired[str]
    snapshot: str


class SnapshotPropertiesEntry(TypedDict):
    """VSS_SNAPSHOT_PROP of one snapshot (`vss.requester.SnapshotProperties` reads it)."""

    snapshot_id: str
    snapshot_set_id: str
    snapshots_count: int
    snapshot_device_object: str  # the snapshot's path in the browser
    original_volume_name: str
    original_volume_path: str
    backing_path: str
    originating_machine: str
    service_machine: str
    exposed_name: str | None
    exposed_path: str | None
    provider_id: str
    snapshot_attributes: int
    context: str
    creation_timestamp: str
    status: str
    seq: int


class PropertiesReply(TypedDict):
    snapshots: list[SnapshotPropertiesEntry]


class WritersRequest(TypedDict):
    """The registered writers (`departed`: also the last ones that disconnected). Reply:
    `WritersReply`; `gather_writer_status` replies the same way."""

    op: Literal["writers", "gather_writer_status"]
    protocol: NotRequired[str]
    departed: NotRequired[bool]


class WritersReply(TypedDict):
    writers: list[WriterDescription]


class BackupShutdownRequest(TypedDict):
    op: Literal["backup_shutdown"]
    protocol: NotRequired[str]


class SessionEndReply(TypedDict):
    """BackupShutdown to the session's writers, and the auto-release sets deleted."""

    writers: list[WriterResult]
    deleted_sets: list[str]
