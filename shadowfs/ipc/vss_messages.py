"""The messages of the VSS service: writers and requesters talking to the daemon, as types.

One job: what every frame between the daemon's VSS service and its writers
(`vss.writer`) and requesters (`vss.requester`, `backup.job`) holds, one
`TypedDict` per request, reply and event, under the rules `ipc.messages`
states for every channel (the envelope is `ipc.frames`; a field is
`NotRequired` exactly when the server has a default; imports nothing but
`typing`).
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

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
    set_id: NotRequired[str]  # the set being created (PrepareForSnapshot to PostSnapshot, and Abort)
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
    label: NotRequired[str]  # names the job that made the set (`snapshot prune --label`)
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
