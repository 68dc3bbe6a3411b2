"""The requester library: a backup or restore job driving the VSS sequence (VSS: IVssBackupComponents).

```
 BackupComponents ──one connection (= one session)──▶ daemon ──events──▶ writers
   document: documents.BackupComponents (the BCD)      ◀── each writer's updated components (merged here)
   writer_metadata: instance id -> documents.WriterMetadata (the WMDs)
```

One job: keep the Backup Components Document and the writers' metadata on the
requester side, and turn each VSS call into daemon requests. Calls that only
change the document (`set_context`, `add_component`, `set_backup_succeeded`,
...) are plain methods; calls that talk to the daemon are `async` (trio).
`SyncBackupComponents` is the same API, blocking, for scripts and the CLI: it
talks over a plain socket and never imports trio (whose import alone costs
0.15 s warm, 0.35 s on a cold cache), driving the same coroutines to
completion (`_complete`): every await in them ends in a blocking call.

Backup, in the order of vss §2:

    async with BackupComponents() as bc:
        bc.set_context(SnapshotContext.BACKUP)
        await bc.gather_writer_metadata()
        bc.add_component(instance_id, writer_id, ComponentType.DATABASE, "", "db")
        bc.set_backup_state(True, False, BackupType.FULL)
        bc.start_snapshot_set()
        await bc.add_to_snapshot_set("db-volume")
        await bc.prepare_for_backup()
        await bc.do_snapshot_set()
        props = await bc.get_snapshot_properties(snapshot_id)   # .snapshot_device_object: read here
        bc.set_backup_succeeded(instance_id, writer_id, ComponentType.DATABASE, "", "db", True)
        await bc.backup_complete()
        xml = bc.save_as_xml()

Invariants:
- The requester's BCD is the authority: a writer's answer can only change the
  fields VSS lets writers set (stamps, differenced and partial files, directed
  targets, restore target, restore failure messages) of components that are
  already in the document.
- The session is the connection: closing it (or the process dying) ends the
  session on the daemon side, which deletes auto-release snapshot sets and
  sends BackupShutdown.
- Every failure is a `RequesterError`, of the class that keeps what the
  daemon meant (`_requester_error`): `RequesterRefused` for a refusal (here
  or by the daemon), `DaemonUnavailable` when the daemon is not running or
  was lost, `SnapshotSetAborted` for a set the daemon aborted (told by the
  error's kind, "set_aborted", never by its message).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import logging
import os
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

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
    from_wire,
)
from shadowfs.ipc import client, frames
from shadowfs.service import protocol

if TYPE_CHECKING:
    import trio

    from shadowfs.ipc.channel import Channel

log = logging.getLogger(__name__)

CALL_TIMEOUT = 600.0
WRITER_FIELDS = ("backup_stamp", "differenced_files", "partial_files", "directed_targets", "restore_target",
                 "pre_restore_failure_msg", "post_restore_failure_msg")

__all__ = ["BackupComponents", "DaemonUnavailable", "RequesterError", "RequesterRefused",
           "SnapshotProperties", "SnapshotSetAborted", "SyncBackupComponents", "WriterStatus"]


def _requester_error(exc: BaseException) -> RequesterError:
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
    last_failure: dict[str, Any] | None
    connected: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WriterStatus:
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
    def from_json(cls, data: dict[str, Any]) -> SnapshotProperties:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["context"] = SnapshotContext(values["context"])
        return cls(**values)


class BackupComponents:
    """One backup or restore session (VSS: IVssBackupComponents), async on trio."""

    def __init__(self, state_dir: str | None = None) -> None:
        self.state_dir = statedir.resolve_state_dir(state_dir)
        self.document = BackupComponentsDocument()
        self.writer_metadata: dict[str, WriterMetadata] = {}
        self.writer_status: list[WriterStatus] = []
        self.last_results: list[dict[str, Any]] = []
        self._volumes: dict[str, str] = {}   # volume name -> snapshot id (AddToSnapshotSet)
        self._channel: Channel | None = None
        self._blocking: client.DaemonClient | None = None
        self._nursery_cm: Any = None

    # ---- connection ------------------------------------------------------------------------------

    async def connect(self, nursery: trio.Nursery) -> None:
        """Open the session (the connection), its reader running in `nursery`; `hello` checks the protocol.

        `async with BackupComponents() as bc:` does this with a nursery of its own.
        """
        from shadowfs.ipc.channel import Channel  # here, not at the top: the blocking API never needs trio

        if self._channel is not None:
            return
        try:
            # a Unix socket connects at once (the daemon accepts from a backlog): fine in a trio task
            sock = client.connect(self.state_dir)
        except ShadowfsError as exc:
            raise _requester_error(exc) from None
        self._channel = Channel.from_socket(sock)
        await nursery.start(self._channel.run)
        await self._call({"op": "hello", "protocol": protocol.PROTOCOL, "role": "requester"})

    async def close(self) -> None:
        """End the session: BackupShutdown to the writers, auto-release sets deleted, connection closed."""
        if self._channel is None:
            return
        channel, self._channel = self._channel, None
        try:
            await channel.call({"op": "backup_shutdown"}, timeout=60)
        except (frames.RemoteError, frames.ChannelClosed, frames.CallTimeout, OSError, RuntimeError):
            pass  # the daemon is gone (RuntimeError: the channel's reader ended): nothing to shut down
        finally:
            channel.close()

    async def __aenter__(self) -> BackupComponents:
        import trio

        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        try:
            await self.connect(nursery)
        except BaseException as exc:
            await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        import trio

        try:
            with trio.CancelScope(shield=True):
                await self.close()
        finally:
            await self._nursery_cm.__aexit__(*exc)

    async def _call(self, request: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        full = {"protocol": protocol.PROTOCOL, **request}
        if self._blocking is None and self._channel is None:
            raise RequesterRefused("not connected: use `async with BackupComponents() as bc:`")
        try:
            if self._blocking is not None:
                reply = self._blocking.call(full, timeout)
            else:
                assert self._channel is not None
                try:
                    reply = await self._channel.call(full, timeout=timeout)
                except frames.RemoteError as exc:  # the channel keeps the kind; the class comes back here
                    raise from_wire(str(exc), exc.kind) from None
        except (ShadowfsError, OSError) as exc:
            raise _requester_error(exc) from None
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

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

    initialize_for_restore = load_from_xml

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

    # ---- calls to the daemon ---------------------------------------------------------------------

    async def gather_writer_metadata(self, timeout: float | None = None) -> dict[str, WriterMetadata]:
        """Identify every writer; keep each WMD (writers that fail Identify show in the writer status)."""
        reply = await self._call({"op": "gather_writer_metadata",
                                  **({"timeout": timeout} if timeout else {})})
        self.writer_metadata = {}
        for entry in reply["writers"]:
            if entry.get("ok") and entry.get("metadata"):
                self.writer_metadata[entry["instance_id"]] = WriterMetadata.from_xml(entry["metadata"])
        self.last_results = reply["writers"]
        return self.writer_metadata

    def start_snapshot_set(self) -> str:
        """A new snapshot set id (StartSnapshotSet); recorded in the BCD."""
        set_id = uuid.uuid4()
        self.document.start_snapshot_set(set_id)
        self._volumes = {}
        return str(set_id)

    async def add_to_snapshot_set(self, volume: str) -> str:
        """Add a volume (its name, or any path inside it) to the set; returns the snapshot id it will get."""
        if self.document.snapshot_set is None:
            raise RequesterRefused("add_to_snapshot_set: call start_snapshot_set first")
        name = await self._volume_name(volume)
        if name in self._volumes:
            raise RequesterRefused(f"volume {name} is already in the snapshot set")
        if len(self._volumes) >= protocol.MAX_VOLUMES_PER_SET:
            raise RequesterRefused(f"a snapshot set holds at most {protocol.MAX_VOLUMES_PER_SET} volumes")
        self._volumes[name] = str(uuid.uuid4())
        return self._volumes[name]

    async def volumes(self) -> list[dict[str, Any]]:
        """The protected volumes (`volume list --json` entries: name, backing, mount, ...)."""
        return list((await self._call({"op": "volume_list"}))["volumes"])

    async def is_volume_supported(self, volume: str) -> bool:
        try:
            await self._volume_name(volume)
        except RequesterError:
            return False
        return True

    async def _volume_name(self, volume: str) -> str:
        volumes = (await self._call({"op": "volume_list"}))["volumes"]
        for entry in volumes:
            if volume == entry["name"]:
                return str(entry["name"])
        if os.path.isabs(volume):
            for entry in volumes:
                roots = (entry["mount"], entry["backing"])
                if any(statedir.is_within(os.path.normpath(volume), root) for root in roots):
                    return str(entry["name"])
        raise RequesterRefused(f"{volume!r} is not a shadowfs volume or a path inside one")

    def _writers(self, *, restore: bool = False) -> list[str]:
        """Instance ids of the writers with components in the BCD (for restore: selected for restore)."""
        ids = []
        for writer, component in self.document.iter_components():
            if not restore or component.selected_for_restore or not any(
                    c.selected_for_restore for _, c in self.document.iter_components()):
                ids.append(str(writer.instance_id))
        return list(dict.fromkeys(ids))

    def _fields(self) -> dict[str, Any]:
        doc = self.document
        return {"context": doc.context.value, "backup_type": doc.backup_type.value,
                "partial_file_support": doc.partial_file_support, "bcd": doc.to_xml()}

    async def _sequence_call(self, op: str, writers: list[str],
                             timeout: float | None) -> list[dict[str, Any]]:
        reply = await self._call({"op": op, **self._fields(), "writers": writers,
                                  **({"timeout": timeout} if timeout else {})})
        self._merge(reply["writers"])
        return reply["writers"]

    async def prepare_for_backup(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """PrepareForBackup to the writers with components in the BCD; their answers merged into it."""
        writers = self._writers() if self.document.context.involves_writers else []
        return await self._sequence_call("prepare_for_backup", writers, timeout)

    async def do_snapshot_set(self, *, freeze_timeout: float | None = None,
                              event_timeout: float | None = None) -> dict[str, Any]:
        """Create the set (PrepareForSnapshot, Freeze, hold, Thaw, PostSnapshot).

        Raises SnapshotSetAborted when it could not be made (nothing of it then exists)."""
        if self.document.snapshot_set is None or not self._volumes:
            raise RequesterRefused("do_snapshot_set: start_snapshot_set and add_to_snapshot_set first")
        context = self.document.context
        request: dict[str, Any] = {
            "op": "snapshot_create", **self._fields(), "volumes": list(self._volumes),
            "snapshot_ids": dict(self._volumes), "set_id": str(self.document.snapshot_set_id),
            "writers": self._writers() if context.involves_writers else False}
        if freeze_timeout is not None:
            request["freeze_timeout"] = freeze_timeout
        if event_timeout is not None:
            request["event_timeout"] = event_timeout
        reply = await self._call(request)
        self._merge(reply.get("writers", []))
        created = _nanoseconds(reply["created"])
        assert self.document.snapshot_set is not None
        self.document.snapshot_set.creation_time = created
        for snap in reply["snapshots"]:
            props = await self.get_snapshot_properties(snap["id"])
            self.document.add_snapshot(uuid.UUID(snap["id"]), snap["volume"], props.original_volume_path,
                                       device_object=props.snapshot_device_object, creation_time=created)
        return reply

    async def get_snapshot_properties(self, snapshot_id: str) -> SnapshotProperties:
        reply = await self._call({"op": "snapshot_properties", "snapshot": str(snapshot_id)})
        return SnapshotProperties.from_json(reply["snapshots"][0])

    async def query_snapshots(self) -> list[SnapshotProperties]:
        """Properties of every snapshot the daemon has (VSS: Query)."""
        snapshots = (await self._call({"op": "snapshot_list"}))["snapshots"]
        set_ids = list(dict.fromkeys(s["set_id"] for s in snapshots))
        result: list[SnapshotProperties] = []
        for set_id in set_ids:
            reply = await self._call({"op": "snapshot_properties", "snapshot": set_id})
            result.extend(SnapshotProperties.from_json(p) for p in reply["snapshots"])
        return result

    async def delete_snapshots(self, snapshot_or_set_id: str) -> list[dict[str, Any]]:
        return (await self._call({"op": "snapshot_delete", "snapshot": str(snapshot_or_set_id)}))["deleted"]

    async def backup_complete(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return await self._sequence_call("backup_complete", self._writers(), timeout)

    async def abort_backup(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return await self._sequence_call("abort_backup", self._writers(), timeout)

    async def pre_restore(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return await self._sequence_call("pre_restore", self._writers(restore=True), timeout)

    async def post_restore(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return await self._sequence_call("post_restore", self._writers(restore=True), timeout)

    async def gather_writer_status(self) -> list[WriterStatus]:
        reply = await self._call({"op": "gather_writer_status"})
        self.writer_status = [WriterStatus.from_json(w) for w in reply["writers"]]
        return self.writer_status

    async def backup_shutdown(self) -> dict[str, Any]:
        """End the sequence without closing: BackupShutdown, auto-release sets deleted."""
        return await self._call({"op": "backup_shutdown"})

    # ---- merging writers' answers ------------------------------------------------------------------

    def _merge(self, results: list[dict[str, Any]]) -> None:
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


def _complete(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (each of its awaits ends in a blocking call) and return
    its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a blocking requester call tried to wait for an event loop")


class SyncBackupComponents:
    """`BackupComponents` for scripts: the same methods, blocking, over a plain socket (no trio).

    Use it as a context manager (or call `close`); async methods of `BackupComponents` become
    blocking calls, the others are passed through.
    """

    def __init__(self, state_dir: str | None = None) -> None:
        self.components = BackupComponents(state_dir)
        try:
            self.components._blocking = client.DaemonClient(self.components.state_dir, CALL_TIMEOUT)
        except ShadowfsError as exc:
            raise _requester_error(exc) from None
        try:
            self._run(self.components._call, {"op": "hello", "protocol": protocol.PROTOCOL,
                                              "role": "requester"})
        except BaseException:
            self.components._blocking.close()
            self.components._blocking = None
            raise

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _complete(func(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.components, name)
        if inspect.iscoroutinefunction(attr):
            return functools.partial(self._run, attr)
        return attr

    def close(self) -> None:
        """End the session (as `BackupComponents.close`): BackupShutdown, then the connection closed."""
        session, self.components._blocking = self.components._blocking, None
        if session is None:
            return
        try:
            session.call({"protocol": protocol.PROTOCOL, "op": "backup_shutdown"}, 60)
        except (ShadowfsError, OSError):
            pass  # the daemon is gone: nothing to shut down
        finally:
            session.close()

    def __enter__(self) -> SyncBackupComponents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
