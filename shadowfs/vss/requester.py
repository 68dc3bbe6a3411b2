"""The requester library: a backup or restore job driving the VSS sequence (VSS: IVssBackupComponents).

```
 BackupComponents ──one connection (= one session)──▶ daemon ──events──▶ writers
   document: documents.BackupComponents (the BCD)      ◀── each writer's updated components (merged here)
   writer_metadata: instance id -> documents.WriterMetadata (the WMDs)
```

One job: the two faces of a requester session (`vss.session.RequesterSession`,
which keeps the documents and holds every call once). Calls that only change
the document (`set_context`, `add_component`, `set_backup_succeeded`, ...) are
plain methods of both. Calls that talk to the daemon are `async` (trio) in
`BackupComponents`; `SyncBackupComponents` has the same calls, with the same
names and arguments, blocking, for scripts and jobs: it talks over a plain
socket and never imports trio (whose import alone costs 0.15 s warm, 0.35 s
on a cold cache), driving the same coroutines to completion (`complete`):
every await in them ends in a blocking call.

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

    with SyncBackupComponents() as bc:      # the same, blocking: bc.gather_writer_metadata(), ...

Invariants:
- The session is the connection: closing it (or the process dying) ends the
  session on the daemon side, which deletes auto-release snapshot sets and
  sends BackupShutdown.
- Every failure is a `RequesterError` (`session.requester_error`).
- Importing this module, and using `SyncBackupComponents`, imports no trio;
  `BackupComponents` imports it when it connects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from shadowfs.documents import WriterMetadata
from shadowfs.errors import (
    DaemonUnavailable,
    RequesterError,
    RequesterRefused,
    ShadowfsError,
    SnapshotSetAborted,
    from_wire,
)
from shadowfs.ipc import client, frames
from shadowfs.ipc.frames import Frame, Message
from shadowfs.ipc.messages import (
    DeletedSnapshot,
    VolumeEntry,
)
from shadowfs.ipc.vss_messages import (
    BackupShutdownRequest,
    HelloRequest,
    SessionEndReply,
    SnapshotCreateReply,
    WriterResult,
)
from shadowfs.service import protocol
from shadowfs.vss.session import (
    CALL_TIMEOUT,
    RequesterSession,
    SnapshotProperties,
    WriterStatus,
    requester_error,
)

if TYPE_CHECKING:
    import trio

    from shadowfs.ipc.channel import Channel

__all__ = ["BackupComponents", "DaemonUnavailable", "RequesterError", "RequesterRefused",
           "SnapshotProperties", "SnapshotSetAborted", "SyncBackupComponents", "WriterStatus"]

T = TypeVar("T")

HELLO: HelloRequest = {"op": "hello", "protocol": protocol.PROTOCOL, "role": "requester"}
SHUTDOWN_TIMEOUT = 60.0


class BackupComponents(RequesterSession):
    """One backup or restore session (VSS: IVssBackupComponents), async on trio."""

    def __init__(self, state_dir: str | None = None) -> None:
        super().__init__(state_dir)
        self._channel: Channel | None = None
        self._nursery_cm: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None

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
            raise requester_error(exc) from None
        self._channel = Channel.from_socket(sock)
        await nursery.start(self._channel.run)
        await self._call(HELLO)

    async def close(self) -> None:
        """End the session: BackupShutdown to the writers, auto-release sets deleted, connection closed."""
        if self._channel is None:
            return
        channel, self._channel = self._channel, None
        shutdown: BackupShutdownRequest = {"op": "backup_shutdown"}
        try:
            await channel.call(shutdown, timeout=SHUTDOWN_TIMEOUT)
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

        assert self._nursery_cm is not None
        try:
            with trio.CancelScope(shield=True):
                await self.close()
        finally:
            await self._nursery_cm.__aexit__(*exc)

    async def _call(self, request: Message, timeout: float = CALL_TIMEOUT) -> Frame:
        full = {"protocol": protocol.PROTOCOL, **request}
        if self._channel is None:
            raise RequesterRefused("not connected: use `async with BackupComponents() as bc:`")
        try:
            try:
                reply = await self._channel.call(full, timeout=timeout)
            except frames.RemoteError as exc:  # the channel keeps the kind; the class comes back here
                raise from_wire(str(exc), exc.kind) from None
        except (ShadowfsError, OSError) as exc:
            raise requester_error(exc) from None
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    # ---- calls to the daemon (`RequesterSession` holds what each does) ---------------------------------

    async def gather_writer_metadata(self, timeout: float | None = None) -> dict[str, WriterMetadata]:
        """Identify every writer; keep each WMD (writers that fail Identify show in the writer status)."""
        return await self._gather_writer_metadata(timeout)

    async def add_to_snapshot_set(self, volume: str) -> str:
        """Add a volume (its name, or any path inside it) to the set; returns the snapshot id it will get."""
        return await self._add_to_snapshot_set(volume)

    async def volumes(self) -> list[VolumeEntry]:
        """The protected volumes (`volume list --json` entries: name, backing, mount, ...)."""
        return await self._volume_list()

    async def is_volume_supported(self, volume: str) -> bool:
        return await self._is_volume_supported(volume)

    async def prepare_for_backup(self, timeout: float | None = None) -> list[WriterResult]:
        """PrepareForBackup to the writers with components in the BCD; their answers merged into it."""
        return await self._prepare_for_backup(timeout)

    async def do_snapshot_set(self, *, freeze_timeout: float | None = None,
                              event_timeout: float | None = None) -> SnapshotCreateReply:
        """Create the set (PrepareForSnapshot, Freeze, hold, Thaw, PostSnapshot).

        Raises SnapshotSetAborted when it could not be made (nothing of it then exists)."""
        return await self._do_snapshot_set(freeze_timeout, event_timeout)

    async def get_snapshot_properties(self, snapshot_id: str) -> SnapshotProperties:
        return await self._get_snapshot_properties(snapshot_id)

    async def query_snapshots(self) -> list[SnapshotProperties]:
        """Properties of every snapshot the daemon has (VSS: Query)."""
        return await self._query_snapshots()

    async def delete_snapshots(self, snapshot_or_set_id: str) -> list[DeletedSnapshot]:
        return await self._delete_snapshots(snapshot_or_set_id)

    async def backup_complete(self, timeout: float | None = None) -> list[WriterResult]:
        return await self._sequence_call("backup_complete", self._writers(), timeout)

    async def abort_backup(self, timeout: float | None = None) -> list[WriterResult]:
        return await self._sequence_call("abort_backup", self._writers(), timeout)

    async def pre_restore(self, timeout: float | None = None) -> list[WriterResult]:
        return await self._sequence_call("pre_restore", self._writers(restore=True), timeout)

    async def post_restore(self, timeout: float | None = None) -> list[WriterResult]:
        return await self._sequence_call("post_restore", self._writers(restore=True), timeout)

    async def gather_writer_status(self) -> list[WriterStatus]:
        return await self._gather_writer_status()

    async def backup_shutdown(self) -> SessionEndReply:
        """End the sequence without closing: BackupShutdown, auto-release sets deleted."""
        return await self._backup_shutdown()


def complete(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (each of its awaits ends in a blocking call) and return
    its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a blocking requester call tried to wait for an event loop")


class SyncBackupComponents(RequesterSession):
    """`BackupComponents` for scripts and jobs: the same calls, blocking, over a plain socket (no trio).

    Use it as a context manager (or call `close`). Each daemon call has the name and the arguments
    of its `BackupComponents` coroutine and returns what that coroutine returns.
    """

    def __init__(self, state_dir: str | None = None) -> None:
        super().__init__(state_dir)
        try:
            self._client: client.DaemonClient | None = client.DaemonClient(self.state_dir, CALL_TIMEOUT)
        except ShadowfsError as exc:
            raise requester_error(exc) from None
        try:
            complete(self._call(HELLO))
        except BaseException:
            self._client.close()
            self._client = None
            raise

    async def _call(self, request: Message, timeout: float = CALL_TIMEOUT) -> Frame:
        # a coroutine only so that `RequesterSession` runs the same code for both APIs: it never awaits
        full = {"protocol": protocol.PROTOCOL, **request}
        if self._client is None:
            raise RequesterRefused("not connected: the session was closed")
        try:
            return self._client.call(full, timeout)
        except (ShadowfsError, OSError) as exc:
            raise requester_error(exc) from None

    def close(self) -> None:
        """End the session (as `BackupComponents.close`): BackupShutdown, then the connection closed."""
        session, self._client = self._client, None
        if session is None:
            return
        shutdown: BackupShutdownRequest = {"op": "backup_shutdown"}
        try:
            session.call({"protocol": protocol.PROTOCOL, **shutdown}, SHUTDOWN_TIMEOUT)
        except (ShadowfsError, OSError):
            pass  # the daemon is gone: nothing to shut down
        finally:
            session.close()

    def __enter__(self) -> SyncBackupComponents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls to the daemon: `BackupComponents`' coroutines, blocking ------------------------------

    def gather_writer_metadata(self, timeout: float | None = None) -> dict[str, WriterMetadata]:
        """Identify every writer; keep each WMD (writers that fail Identify show in the writer status)."""
        return complete(self._gather_writer_metadata(timeout))

    def add_to_snapshot_set(self, volume: str) -> str:
        """Add a volume (its name, or any path inside it) to the set; returns the snapshot id it will get."""
        return complete(self._add_to_snapshot_set(volume))

    def volumes(self) -> list[VolumeEntry]:
        """The protected volumes (`volume list --json` entries: name, backing, mount, ...)."""
        return complete(self._volume_list())

    def is_volume_supported(self, volume: str) -> bool:
        return complete(self._is_volume_supported(volume))

    def prepare_for_backup(self, timeout: float | None = None) -> list[WriterResult]:
        """PrepareForBackup to the writers with components in the BCD; their answers merged into it."""
        return complete(self._prepare_for_backup(timeout))

    def do_snapshot_set(self, *, freeze_timeout: float | None = None,
                        event_timeout: float | None = None) -> SnapshotCreateReply:
        """Create the set (PrepareForSnapshot, Freeze, hold, Thaw, PostSnapshot).

        Raises SnapshotSetAborted when it could not be made (nothing of it then exists)."""
        return complete(self._do_snapshot_set(freeze_timeout, event_timeout))

    def get_snapshot_properties(self, snapshot_id: str) -> SnapshotProperties:
        return complete(self._get_snapshot_properties(snapshot_id))

    def query_snapshots(self) -> list[SnapshotProperties]:
        """Properties of every snapshot the daemon has (VSS: Query)."""
        return complete(self._query_snapshots())

    def delete_snapshots(self, snapshot_or_set_id: str) -> list[DeletedSnapshot]:
        return complete(self._delete_snapshots(snapshot_or_set_id))

    def backup_complete(self, timeout: float | None = None) -> list[WriterResult]:
        return complete(self._sequence_call("backup_complete", self._writers(), timeout))

    def abort_backup(self, timeout: float | None = None) -> list[WriterResult]:
        return complete(self._sequence_call("abort_backup", self._writers(), timeout))

    def pre_restore(self, timeout: float | None = None) -> list[WriterResult]:
        return complete(self._sequence_call("pre_restore", self._writers(restore=True), timeout))

    def post_restore(self, timeout: float | None = None) -> list[WriterResult]:
        return complete(self._sequence_call("post_restore", self._writers(restore=True), timeout))

    def gather_writer_status(self) -> list[WriterStatus]:
        return complete(self._gather_writer_status())

    def backup_shutdown(self) -> SessionEndReply:
        """End the sequence without closing: BackupShutdown, auto-release sets deleted."""
        return complete(self._backup_shutdown())
