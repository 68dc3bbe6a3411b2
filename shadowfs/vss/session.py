"""One requester session without its transport: the documents, and every call as the same code.

```
 RequesterSession ── document: documents.BackupComponents (the BCD), writer_metadata (the WMDs)
     ├─ document-only calls (set_context, add_component, ...): plain methods
     └─ daemon calls (_gather_writer_metadata, _do_snapshot_set, ...): coroutines over `_call`
 BackupComponents (vss.requester): `_call` over a trio channel; each call awaits its coroutine
 SyncBackupComponents (vss.requester): `_call` over a blocking socket; each call completes it
```

One job: keep the requester's side of a session (VSS: IVssBackupComponents)
once, for the async and the blocking API alike (design §6.1: both run the same
code). A subclass supplies `_call`, the one place a request meets the daemon,
and exposes each daemon call under its VSS name.

Invariants:
- The requester's BCD is the authority: a writer's answer can only change the
  fields VSS lets writers set (stamps, differenced and partial files, directed
  targets, restore target, restore failure messages) of components that are
  already in the document (`_merge`, vss §2.1).
- Requests are built as their `ipc.messages` types. The daemon's replies are
  read as their types without being checked again (`cast`): the daemon is the
  trusted side of the session.
- Every failure of the daemon or the connection is a `RequesterError`, of the
  class that keeps what the daemon meant (`requester_error`): `RequesterRefused`
  for a refusal (here or by the daemon), `DaemonUnavailable` when the daemon is
  not running or was lost, `SnapshotSetAborted` for a set the daemon aborted
  (told by the error's kind, "set_aborted", never by its message).
- Imports no trio: the blocking API must not pay for it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import uuid
from typing import cast

from shadowfs import statedir
from shadowfs.documents import (
    BackupComponents as BackupComponentsDocument,
)
from shadowfs.documents import (
    BackupType,
    ComponentState,
    ComponentType,
    DocumentError,
    FileRestoreStatus,
    RestoreType,
    SnapshotContext,
    WriterComponents,
    WriterFailure,
    WriterMetadata,
    WriterState,
)
from shadowfs.errors import (
    EXIT_REFUSED,
    DaemonNotRunning,
    DaemonUnavailable,
    PeerUnreachable,
    RequesterError,
    RequesterRefused,
    SetAborted,
    ShadowfsError,
    SnapshotSetAborted,
    exit_code_of,
)
from shadowfs.ipc import frames
from shadowfs.ipc.frames import Frame, Message
from shadowfs.ipc.messages import (
    DeletedSnapshot,
    SnapshotDeleteReply,
    SnapshotDeleteRequest,
    SnapshotListReply,
    SnapshotListRequest,
    VolumeEntry,
    VolumeListReply,
    VolumeListRequest,
)
from shadowfs.ipc.vss_messages import (
    BackupShutdownRequest,
    LastFailure,
    MetadataReply,
    PropertiesReply,
    SequenceOp,
    SequenceRequest,
    SessionEndReply,
    SnapshotCreateReply,
    SnapshotCreateRequest,
    SnapshotPropertiesEntry,
    SnapshotPropertiesRequest,
    WriterDescription,
    WriterResult,
    WriterResultsReply,
    WritersReply,
    WritersRequest,
)
from shadowfs.service import protocol

CALL_TIMEOUT = 600.0
WRITER_FIELDS = ("backup_stamp", "differenced_files", "partial_files", "directed_targets", "restore_target",
                 "pre_restore_failure_msg", "post_restore_failure_msg")


def requester_error(exc: BaseException) -> RequesterError:
    """The requester's error for a failure of the daemon or the connection, of the same meaning."""
    if isinstance(exc, RequesterError):
        return exc
    if isinstance(exc, SetAborted):
        return SnapshotSetAborted(str(exc))
    if isinstance(exc, DaemonNotRunning):
        return DaemonUnavailable(str(exc))
    if isinstance(exc, PeerUnreachable | OSError):
        return DaemonUnavailable(f"lost the shadowfs daemon: {exc}")
    if isinstance(exc, ShadowfsError) and exit_code_of(exc) == EXIT_REFUSED:
        return RequesterRefused(str(exc))
    return RequesterError(f"lost the shadowfs daemon: {exc}" if isinstance(exc, frames.ProtocolError)
                          else str(exc))


@dataclasses.dataclass(frozen=True)
class WriterStatus:
    """One writer's status after GatherWriterStatus (VSS: GetWriterStatus)."""

    instance_id: str
    class_id: str
    writer_name: str
    instance_name: str
    state: WriterState
    failure: WriterFailure | None
    last_failure: LastFailure | None
    connected: bool

    @classmethod
    def from_json(cls, data: WriterDescription) -> WriterStatus:
        failure = data.get("failure")
        return cls(data["instance_id"], data["class_id"], data["writer_name"], data.get("instance_name", ""),
                   WriterState(data["state"]), WriterFailure(failure) if failure else None,
                   data.get("last_failure"), bool(data.get("connected", True)))


@dataclasses.dataclass(frozen=True)
class SnapshotProperties:
    """VSS_SNAPSHOT_PROP: what a requester needs to read one snapshot (device object = browser path)."""

    snapshot_id: str
    snapshot_set_id: str
    snapshots_count: int
    snapshot_device_object: str
    original_volume_name: str
    original_volume_path: str
    backing_path: str
    originating_machine: str
    service_machine: str
    exposed_name: str | None
    exposed_path: str | None
    provider_id: str
    snapshot_attributes: int
    context: SnapshotContext
    creation_timestamp: str
    status: str

    @classmethod
    def from_json(cls, data: SnapshotPropertiesEntry) -> SnapshotProperties:
        return cls(snapshot_id=data["snapshot_id"], snapshot_set_id=data["snapshot_set_id"],
                   snapshots_count=data["snapshots_count"],
                   snapshot_device_object=data["snapshot_device_object"],
                   original_volume_name=data["original_volume_name"],
                   original_volume_path=data["original_volume_path"], backing_path=data["backing_path"],
                   originating_machine=data["originating_machine"], service_machine=data["service_machine"],
                   exposed_name=data["exposed_name"], exposed_path=data["exposed_path"],
                   provider_id=data["provider_id"], snapshot_attributes=data["snapshot_attributes"],
                   context=SnapshotContext(data["context"]), creation_timestamp=data["creation_timestamp"],
                   status=data["status"])


class RequesterSession:
    """The state and the calls of one requester session; a subclass supplies `_call`."""

    def __init__(self, state_dir: str | None = None) -> None:
        self.state_dir = statedir.resolve_state_dir(state_dir)
        self.document = BackupComponentsDocument()
        self.writer_metadata: dict[str, WriterMetadata] = {}
        self.writer_status: list[WriterStatus] = []
        self.last_results: list[WriterResult] = []  # the writers' answers to the last daemon call
        self._volumes: dict[str, str] = {}   # volume name -> snapshot id (AddToSnapshotSet)

    async def _call(self, request: Message, timeout: float = CALL_TIMEOUT) -> Frame:
        """Send `request` (with the protocol version) in this session; the fields of its reply.
        Raises the `RequesterError` of any failure (`requester_error`)."""
        raise NotImplementedError

    # ---- document-only calls -----------------------------------------------------------------------

    def set_context(self, context: SnapshotContext | str) -> None:
        self.document.set_context(SnapshotContext(context))

    def set_backup_state(self, select_components: bool, bootable_system_state_backup: bool,
                         backup_type: BackupType | str, partial_file_support: bool = False) -> None:
        self.document.set_backup_state(select_components, bootable_system_state_backup,
                                       BackupType(backup_type), partial_file_support)

    def set_restore_state(self, restore_type: RestoreType | str) -> None:
        self.document.set_restore_state(RestoreType(restore_type))

    def add_component(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                      logical_path: str, name: str) -> ComponentState:
        return self.document.add_component(uuid.UUID(str(instance_id)), uuid.UUID(str(writer_id)),
                                           ComponentType(component_type), logical_path, name)

    def component(self, instance_id: str, logical_path: str, name: str) -> ComponentState:
        """A component in the document (DocumentError if it is not there)."""
        return self.document.component(uuid.UUID(str(instance_id)), logical_path, name)

    def set_previous_backup_stamp(self, instance_id: str, logical_path: str, name: str, stamp: str) -> None:
        self.component(instance_id, logical_path, name).set_previous_backup_stamp(stamp)

    def set_backup_options(self, instance_id: str, logical_path: str, name: str, options: str) -> None:
        self.component(instance_id, logical_path, name).set_backup_options(options)

    def set_restore_options(self, instance_id: str, logical_path: str, name: str, options: str) -> None:
        self.component(instance_id, logical_path, name).set_restore_options(options)

    def set_backup_succeeded(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                             logical_path: str, name: str, succeeded: bool, failure_msg: str = "") -> None:
        self.component(instance_id, logical_path, name).set_backup_succeeded(succeeded, failure_msg)

    def set_selected_for_restore(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                                 logical_path: str, name: str, selected: bool) -> None:
        self.component(instance_id, logical_path, name).set_selected_for_restore(selected)

    def set_additional_restores(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                                logical_path: str, name: str, additional: bool) -> None:
        self.component(instance_id, logical_path, name).set_additional_restores(additional)

    def add_new_target(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                       logical_path: str, name: str, path: str, filespec: str, recursive: bool,
                       alternate_path: str) -> None:
        self.component(instance_id, logical_path, name).add_new_target(path, filespec, recursive,
                                                                       alternate_path)

    def set_ranges_file_path(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                             logical_path: str, name: str, partial_file_index: int, path: str) -> None:
        self.component(instance_id, logical_path, name).set_ranges_file_path(partial_file_index, path)

    def set_file_restore_status(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                                logical_path: str, name: str, status: FileRestoreStatus | str) -> None:
        self.component(instance_id, logical_path, name).set_file_restore_status(FileRestoreStatus(status))

    def add_alternative_location_mapping(self, instance_id: str, writer_id: str,
                                         component_type: ComponentType | str, logical_path: str, name: str,
                                         path: str, filespec: str, recursive: bool, destination: str) -> None:
        self.component(instance_id, logical_path, name).add_alternative_location_mapping(
            path, filespec, recursive, destination)

    def add_restore_subcomponent(self, instance_id: str, writer_id: str, component_type: ComponentType | str,
                                 logical_path: str, name: str, sub_logical_path: str, sub_name: str,
                                 repair: bool = False) -> None:
        self.component(instance_id, logical_path, name).add_restore_subcomponent(sub_logical_path, sub_name,
                                                                                 repair)

    def save_as_xml(self) -> str:
        """The BCD as XML (SaveAsXML): keep it with the backup; `load_from_xml` reads it back."""
        return self.document.to_xml()

    def load_from_xml(self, xml: str | bytes) -> None:
        """Start a restore from a saved BCD (InitializeForRestore); DocumentError if it is not one."""
        self.document = BackupComponentsDocument.from_xml(xml)

    def initialize_for_restore(self, xml: str | bytes) -> None:
        """The VSS name of `load_from_xml`."""
        self.load_from_xml(xml)

    def get_writer_metadata_count(self) -> int:
        return len(self.writer_metadata)

    def get_writer_metadata(self, index: int) -> tuple[str, WriterMetadata]:
        """(instance id, WMD) of the index-th writer of the last GatherWriterMetadata."""
        return list(self.writer_metadata.items())[index]

    def get_writer_components_count(self) -> int:
        return len(self.document.writers)

    def get_writer_components(self, index: int) -> WriterComponents:
        """The index-th writer's components with everything writers recorded (GetWriterComponents)."""
        return self.document.writers[index]

    def get_backup_stamp(self, instance_id: str, logical_path: str, name: str) -> str:
        """The stamp the writer recorded for this backup (IVssComponent::GetBackupStamp)."""
        return self.component(instance_id, logical_path, name).backup_stamp

    def get_writer_status_count(self) -> int:
        return len(self.writer_status)

    def get_writer_status(self, index: int) -> WriterStatus:
        return self.writer_status[index]

    def free_writer_status(self) -> None:
        self.writer_status = []

    def free_writer_metadata(self) -> None:
        self.writer_metadata = {}

    def start_snapshot_set(self) -> str:
        """A new snapshot set id (StartSnapshotSet); recorded in the BCD."""
        set_id = uuid.uuid4()
        self.document.start_snapshot_set(set_id)
        self._volumes = {}
        return str(set_id)

    # ---- calls to the daemon, each once for both APIs (the subclasses give them their VSS names) -------

    async def _gather_writer_metadata(self, timeout: float | None) -> dict[str, WriterMetadata]:
        request: SequenceRequest = {"op": "gather_writer_metadata"}
        if timeout:
            request["timeout"] = timeout
        reply = cast(MetadataReply, await self._call(request))
        self.writer_metadata = {}
        for entry in reply["writers"]:
            metadata = entry.get("metadata")
            if entry.get("ok") and metadata:
                self.writer_metadata[entry["instance_id"]] = WriterMetadata.from_xml(metadata)
        self.last_results = list(reply["writers"])
        return self.writer_metadata

    async def _add_to_snapshot_set(self, volume: str) -> str:
        if self.document.snapshot_set is None:
            raise RequesterRefused("add_to_snapshot_set: call start_snapshot_set first")
        name = await self._volume_name(volume)
        if name in self._volumes:
            raise RequesterRefused(f"volume {name} is already in the snapshot set")
        if len(self._volumes) >= protocol.MAX_VOLUMES_PER_SET:
            raise RequesterRefused(f"a snapshot set holds at most {protocol.MAX_VOLUMES_PER_SET} volumes")
        self._volumes[name] = str(uuid.uuid4())
        return self._volumes[name]

    async def _volume_list(self) -> list[VolumeEntry]:
        request: VolumeListRequest = {"op": "volume_list"}
        return list(cast(VolumeListReply, await self._call(request))["volumes"])

    async def _is_volume_supported(self, volume: str) -> bool:
        try:
            await self._volume_name(volume)
        except RequesterError:
            return False
        return True

    async def _volume_name(self, volume: str) -> str:
        """The name of the volume `volume` names, or holds (an absolute path inside it)."""
        volumes = await self._volume_list()
        for entry in volumes:
            if volume == entry["name"]:
                return entry["name"]
        if os.path.isabs(volume):
            for entry in volumes:
                roots = (entry["mount"], entry["backing"])
                if any(statedir.is_within(os.path.normpath(volume), root) for root in roots):
                    return entry["name"]
        raise RequesterRefused(f"{volume!r} is not a shadowfs volume or a path inside one")

    def _writers(self, *, restore: bool = False) -> list[str]:
        """Instance ids of the writers with components in the BCD (for restore: selected for restore)."""
        ids = []
        for writer, component in self.document.iter_components():
            if not restore or component.selected_for_restore or not any(
                    c.selected_for_restore for _, c in self.document.iter_components()):
                ids.append(str(writer.instance_id))
        return list(dict.fromkeys(ids))

    async def _sequence_call(self, op: SequenceOp, writers: list[str],
                             timeout: float | None) -> list[WriterResult]:
        doc = self.document  # what the writers learn of the backup: `vss_messages.SequenceFields`
        request: SequenceRequest = {
            "op": op, "context": doc.context.value, "backup_type": doc.backup_type.value,
            "partial_file_support": doc.partial_file_support, "bcd": doc.to_xml(), "writers": writers}
        if timeout:
            request["timeout"] = timeout
        reply = cast(WriterResultsReply, await self._call(request))
        self._merge(reply["writers"])
        return reply["writers"]

    async def _prepare_for_backup(self, timeout: float | None) -> list[WriterResult]:
        writers = self._writers() if self.document.context.involves_writers else []
        return await self._sequence_call("prepare_for_backup", writers, timeout)

    async def _do_snapshot_set(self, freeze_timeout: float | None,
                               event_timeout: float | None) -> SnapshotCreateReply:
        if self.document.snapshot_set is None or not self._volumes:
            raise RequesterRefused("do_snapshot_set: start_snapshot_set and add_to_snapshot_set first")
        doc = self.document
        request: SnapshotCreateRequest = {
            "op": "snapshot_create", "context": doc.context.value, "backup_type": doc.backup_type.value,
            "partial_file_support": doc.partial_file_support, "bcd": doc.to_xml(),
            "volumes": list(self._volumes), "snapshot_ids": dict(self._volumes),
            "set_id": str(doc.snapshot_set_id),
            "writers": self._writers() if doc.context.involves_writers else False}
        if freeze_timeout is not None:
            request["freeze_timeout"] = freeze_timeout
        if event_timeout is not None:
            request["event_timeout"] = event_timeout
        reply = cast(SnapshotCreateReply, await self._call(request))
        self._merge(reply.get("writers", []))
        created = _nanoseconds(reply["created"])
        assert self.document.snapshot_set is not None
        self.document.snapshot_set.creation_time = created
        for snap in reply["snapshots"]:
            props = await self._get_snapshot_properties(snap["id"])
            self.document.add_snapshot(uuid.UUID(snap["id"]), snap["volume"], props.original_volume_path,
                                       device_object=props.snapshot_device_object, creation_time=created)
        return reply

    async def _get_snapshot_properties(self, snapshot_id: str) -> SnapshotProperties:
        request: SnapshotPropertiesRequest = {"op": "snapshot_properties", "snapshot": str(snapshot_id)}
        reply = cast(PropertiesReply, await self._call(request))
        return SnapshotProperties.from_json(reply["snapshots"][0])

    async def _query_snapshots(self) -> list[SnapshotProperties]:
        listing: SnapshotListRequest = {"op": "snapshot_list"}
        snapshots = cast(SnapshotListReply, await self._call(listing))["snapshots"]
        set_ids = list(dict.fromkeys(s["set_id"] for s in snapshots))
        result: list[SnapshotProperties] = []
        for set_id in set_ids:
            request: SnapshotPropertiesRequest = {"op": "snapshot_properties", "snapshot": set_id}
            reply = cast(PropertiesReply, await self._call(request))
            result.extend(SnapshotProperties.from_json(p) for p in reply["snapshots"])
        return result

    async def _delete_snapshots(self, snapshot_or_set_id: str) -> list[DeletedSnapshot]:
        request: SnapshotDeleteRequest = {"op": "snapshot_delete", "snapshot": str(snapshot_or_set_id)}
        return cast(SnapshotDeleteReply, await self._call(request))["deleted"]

    async def _gather_writer_status(self) -> list[WriterStatus]:
        request: WritersRequest = {"op": "gather_writer_status"}
        reply = cast(WritersReply, await self._call(request))
        self.writer_status = [WriterStatus.from_json(w) for w in reply["writers"]]
        return self.writer_status

    async def _backup_shutdown(self) -> SessionEndReply:
        request: BackupShutdownRequest = {"op": "backup_shutdown"}
        return cast(SessionEndReply, await self._call(request))

    # ---- merging writers' answers ------------------------------------------------------------------

    def _merge(self, results: list[WriterResult]) -> None:
        """Copy what writers may set into our components (nothing else, nowhere else)."""
        self.last_results = results
        for result in results:
            xml = result.get("components")
            if not xml:
                continue
            try:
                answer = BackupComponentsDocument.from_xml(xml)
            except DocumentError as exc:
                name = result.get("writer_name")
                raise RequesterError(f"writer {name!r} sent a bad document: {exc}") from None
            instance = uuid.UUID(result["instance_id"])
            for writer, theirs in answer.iter_components():
                ours = self.document.get_component(instance, theirs.logical_path, theirs.name)
                if writer.instance_id != instance or ours is None:
                    continue
                for name in WRITER_FIELDS:
                    setattr(ours, name, getattr(theirs, name))
        self.document.validate()


def _nanoseconds(utc: str) -> int:
    """`2026-11-21T20:43:52Z` -> nanoseconds since the epoch (the BCD's creationTime)."""
    moment = datetime.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000_000
