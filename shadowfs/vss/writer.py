"""The writer library: how an application takes part in snapshot sets (VSS: CVssWriter).

```
 Writer.run ──connect, writer_register──▶ daemon.sock
     ◀── writer_event {identify | prepare_backup | prepare_snapshot | freeze | thaw | post_snapshot |
                       abort | backup_complete | backup_shutdown | pre_restore | post_restore}
     ──▶ hook: on_<event>(ctx)  ──reply {status, failure, message, components, metadata}──▶
```

One job: keep a writer registered with the daemon (reconnecting when the daemon
restarts), turn each event into a call of the matching async hook, and send back
what the hook did: its Writer Metadata Document (`on_identify`), its updated
components of the Backup Components Document (stamps, differenced files,
partial files, restore targets, directed targets, failure messages), or its
failure (veto).

A subclass overrides the hooks it needs; every default succeeds. A hook
succeeds unless it returns False (a veto: failure `non_retryable` unless it
called `ctx.set_writer_failure`), calls `ctx.set_writer_failure`, or raises
(failure `non_retryable`, the exception as message).

Invariants:
- Sequence events (all but Identify and Abort) run one at a time. Abort
  cancels the sequence hook in progress, then runs `on_abort`.
- A frozen writer always thaws: by Thaw, by Abort, by its own freeze window
  expiring (the Freeze event's timeout, default 60 s; `on_abort` is called and
  the late Thaw fails with `timeout`), or by losing the daemon connection
  (`on_abort` is called before reconnecting).
- Within one session, the Backup Components Document is parsed once: what a
  hook records at Freeze is still there at PostSnapshot.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from shadowfs import statedir
from shadowfs.documents import (
    BackupComponents,
    BackupType,
    ComponentState,
    DocumentError,
    SnapshotContext,
    SourceType,
    UsageType,
    WriterComponents,
    WriterFailure,
    WriterMetadata,
)
from shadowfs.errors import WriterError as WriterError
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.vss_messages import (
    WriterEventReply,
    WriterRegisterRequest,
)
from shadowfs.service import protocol
from shadowfs.service.protocol import Event

log = logging.getLogger(__name__)

RECONNECT_MIN = 0.1
RECONNECT_MAX = 2.0
REGISTER_TIMEOUT = 30.0
AUTO_ABORT_TIMEOUT = 30.0


class EventContext:
    """What a hook sees of the event it handles (VSS: the CVssWriter Get* calls during an event)."""

    def __init__(self, writer: Writer, event: Event, frame: frames.Frame,
                 bcd: BackupComponents | None) -> None:
        self.writer = writer
        self.event = event
        self.session = str(frame.get("session") or "")
        self.context = _enum(SnapshotContext, frame.get("context"), SnapshotContext.BACKUP)
        self.backup_type = _enum(BackupType, frame.get("backup_type"), BackupType.FULL)
        self.partial_file_support = frame.get("partial_file_support") is True
        volumes = frame.get("volumes")
        self.volumes = [v for v in volumes if isinstance(v, str)] if isinstance(volumes, list) else []
        timeout = frame.get("timeout")
        self.timeout = float(timeout) if isinstance(timeout, int | float) else protocol.EVENT_TIMEOUT
        self.bcd = bcd
        # the snapshot set of the event: named by the daemon in snapshot creation's events, else the
        # set the requester started in its document (empty when neither says)
        set_id = frame.get("set_id")
        if not isinstance(set_id, str) and bcd is not None and bcd.snapshot_set_id is not None:
            set_id = str(bcd.snapshot_set_id)
        self.set_id = set_id if isinstance(set_id, str) else ""
        self.failure: WriterFailure | None = None
        self.message = ""

    @property
    def components(self) -> WriterComponents | None:
        """This writer's selected components in the BCD (None when the event carries no BCD)."""
        if self.bcd is None:
            return None
        return self.bcd.get_writer(uuid.UUID(self.writer.instance_id))

    def selected(self) -> list[ComponentState]:
        """This writer's components in the BCD (IVssWriterComponents), in document order."""
        components = self.components
        return list(components.components) if components is not None else []

    def component(self, logical_path: str, name: str) -> ComponentState | None:
        """One of this writer's components in the BCD, or None if not selected."""
        components = self.components
        return components.get_component(logical_path, name) if components is not None else None

    def is_component_selected(self, logical_path: str, name: str) -> bool:
        return self.component(logical_path, name) is not None

    def is_path_affected(self, path: str) -> bool:
        """Whether `path` lies on a volume of the snapshot set (IsPathAffected)."""
        return any(statedir.is_within(os.path.abspath(path), root) for root in self.volumes)

    def set_writer_failure(self, failure: WriterFailure, message: str = "") -> None:
        """Fail this event with a VSS reason (SetWriterFailure); the hook's result no longer matters."""
        self.failure = WriterFailure(failure)
        self.message = message


def _enum(kind: Any, value: Any, default: Any) -> Any:
    try:
        return kind(value)
    except (ValueError, TypeError):
        return default


class Writer:
    """Base class of a writer: identity, hooks (override them), and `run` (the connection loop)."""

    # class defaults that a subclass sets; each instance may override them (`__init__`)
    class_id: str = ""                           # a UUID: the writer's class (VSS writer id)
    writer_name: str = "shadowfs writer"
    usage_type: UsageType = UsageType.USER_DATA
    data_source: SourceType = SourceType.OTHER

    def __init__(self, *, instance_name: str = "", instance_id: str | None = None,
                 class_id: str | None = None, writer_name: str | None = None,
                 freeze_timeout: float = protocol.DEFAULT_FREEZE_TIMEOUT) -> None:
        try:
            self.class_id = str(uuid.UUID(class_id or type(self).class_id))
        except ValueError:
            raise WriterError(f"writer {writer_name or type(self).writer_name!r} needs a class id "
                              "(a UUID): set Writer.class_id or pass class_id=") from None
        self.writer_name = writer_name or type(self).writer_name
        self.instance_name = instance_name
        # stable across restarts: one instance id per (class, instance name)
        self.instance_id = str(uuid.UUID(instance_id) if instance_id
                               else uuid.uuid5(uuid.UUID(self.class_id), instance_name))
        self.freeze_timeout = freeze_timeout
        self.registered = trio.Event()
        self._lock = trio.Lock()
        self._hooks: set[trio.CancelScope] = set()
        self._frozen: EventContext | None = None
        self._watchdog: trio.CancelScope | None = None
        self._expired: str | None = None
        self._docs: dict[str, tuple[str, BackupComponents]] = {}
        self._nursery: trio.Nursery | None = None

    # ---- hooks (override) --------------------------------------------------------------------------

    async def on_identify(self, metadata: WriterMetadata) -> None:
        """Describe components, files, exclusions, restore method and schema (add to `metadata`)."""

    async def on_prepare_backup(self, ctx: EventContext) -> bool | None:
        return True

    async def on_prepare_snapshot(self, ctx: EventContext) -> bool | None:
        return True

    async def on_freeze(self, ctx: EventContext) -> bool | None:
        return True

    async def on_thaw(self, ctx: EventContext) -> bool | None:
        return True

    async def on_post_snapshot(self, ctx: EventContext) -> bool | None:
        return True

    async def on_abort(self, ctx: EventContext) -> bool | None:
        """Undo whatever the sequence did; must thaw a frozen application."""
        return True

    async def on_backup_complete(self, ctx: EventContext) -> bool | None:
        return True

    async def on_backup_shutdown(self, ctx: EventContext) -> bool | None:
        return True

    async def on_pre_restore(self, ctx: EventContext) -> bool | None:
        return True

    async def on_post_restore(self, ctx: EventContext) -> bool | None:
        return True

    # ---- metadata ----------------------------------------------------------------------------------

    async def metadata(self) -> WriterMetadata:
        """A fresh Writer Metadata Document filled by `on_identify`."""
        wmd = WriterMetadata.create(self.class_id, self.instance_id, self.writer_name,
                                    instance_name=self.instance_name, usage=self.usage_type,
                                    data_source=self.data_source)
        await self.on_identify(wmd)
        wmd.validate()
        return wmd

    @staticmethod
    def paths_of(wmd: WriterMetadata) -> list[str]:
        """Every directory the WMD names (file specs and their alternate paths): what the writer touches."""
        specs = [spec for component in wmd.components for spec in component.all_file_specs]
        return sorted({spec.path for spec in specs} | {s.alternate_path for s in specs if s.alternate_path})

    # ---- connection loop ---------------------------------------------------------------------------

    def main(self, state_dir: str | None = None) -> None:
        """Run the writer until interrupted (a blocking entry point for writer processes)."""
        trio.run(self.run, state_dir)

    async def run(self, state_dir: str | None = None, *, reconnect: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register and serve events; reconnect (with backoff) whenever the daemon goes away."""
        path = statedir.socket_path(statedir.resolve_state_dir(state_dir))
        backoff = RECONNECT_MIN
        started = False

        def on_registered() -> None:
            nonlocal backoff, started
            backoff = RECONNECT_MIN
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                channel = await self._connect(path)
                await self._connection(channel, on_registered)
            except (OSError, frames.ChannelClosed, frames.CallTimeout, frames.ProtocolError) as exc:
                log.debug("writer %s: connection to %s lost or refused: %s", self.writer_name, path, exc)
            finally:
                self.registered = trio.Event()
                with trio.CancelScope(shield=True):
                    await self._connection_lost()
            if not reconnect:
                return
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _connection(self, channel: _WriterChannel, on_registered: Callable[[], None]) -> None:
        """Register on one connection and serve it until it ends; raises its one real error, unwrapped."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._serve, channel, nursery)
                await self._register(channel)
                on_registered()
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            self._nursery = None
            channel.close()

    async def _connect(self, path: str) -> _WriterChannel:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return _WriterChannel(sock)

    async def _register(self, channel: Channel) -> None:
        try:
            register: WriterRegisterRequest = {
                "op": "writer_register", "protocol": protocol.PROTOCOL, "class_id": self.class_id,
                "instance_id": self.instance_id, "instance_name": self.instance_name,
                "writer_name": self.writer_name, "usage_type": self.usage_type.value,
                "freeze_timeout": self.freeze_timeout}
            await channel.call(register, timeout=REGISTER_TIMEOUT)
        except frames.RemoteError as exc:
            raise WriterError(f"the daemon refused writer {self.writer_name!r}: {exc}") from None
        self.registered.set()
        log.info("writer %s (instance %s) registered", self.writer_name, self.instance_id)

    async def _serve(self, channel: _WriterChannel, nursery: trio.Nursery, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def watch() -> None:
            await channel.lost.wait()
            for scope in list(self._hooks):
                scope.cancel()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            await channel.run(on_request=self._on_request, task_status=task_status)
        finally:
            channel.lost.set()
            channel.close()

    async def _connection_lost(self) -> None:
        """Thaw an application frozen when the daemon went away."""
        if self._frozen is not None:
            log.warning("writer %s: connection lost while frozen; aborting (thawing)", self.writer_name)
            await self._auto_abort(self._frozen)

    # ---- events ------------------------------------------------------------------------------------

    async def _on_request(self, frame: frames.Frame, fds: list[int]) -> WriterEventReply:
        """Serve one `vss_messages.WriterEventRequest`; its other fields are read leniently
        (`EventContext`)."""
        frames.close_fds(fds)
        if frame.get("op") != "writer_event":
            raise frames.RequestError(f"unknown operation {frame.get('op')!r}")
        name = frame.get("event")
        try:
            event = Event(str(name))  # no other JSON value spells an event's name
        except ValueError:
            raise frames.RequestError(f"unknown writer event {name!r}") from None
        if event is Event.IDENTIFY:
            return await self._identify()
        bcd = self._document(frame)
        ctx = EventContext(self, event, frame, bcd)
        if event is Event.ABORT:
            for scope in list(self._hooks):
                scope.cancel()
        async with self._lock:
            result = await self._dispatch(ctx)
        return self._reply(ctx, result)

    async def _identify(self) -> WriterEventReply:
        try:
            wmd = await self.metadata()
        except Exception as exc:
            log.exception("writer %s: Identify failed", self.writer_name)
            return {"status": "failed", "failure": WriterFailure.NON_RETRYABLE.value,
                    "message": f"{type(exc).__name__}: {exc}"}
        return {"status": "ok", "metadata": wmd.to_xml(), "paths": self.paths_of(wmd)}

    def _document(self, frame: frames.Frame) -> BackupComponents | None:
        text = frame.get("bcd")
        session = str(frame.get("session") or "")
        if not isinstance(text, str):
            return None
        cached = self._docs.get(session)
        if cached is not None and cached[0] == text:
            return cached[1]
        try:
            bcd = BackupComponents.from_xml(text)
        except DocumentError as exc:
            log.error("writer %s: unreadable backup components document: %s", self.writer_name, exc)
            return None
        self._docs = {session: (text, bcd)}  # one session at a time
        return bcd

    async def _dispatch(self, ctx: EventContext) -> bool | None:
        event = ctx.event
        if event is Event.THAW and self._expired == ctx.session:
            self._expired = None
            ctx.set_writer_failure(WriterFailure.TIMEOUT, "the freeze window expired before Thaw; "
                                                          "the writer thawed itself")
            return False
        if event is Event.ABORT:
            self._stop_watchdog()
            if self._frozen is None and self._expired == ctx.session:
                return True  # thawed already
            self._frozen = None
        result = await self._call_hook(ctx)
        if event is Event.FREEZE and ctx.failure is None and result is not False:
            self._frozen = ctx
            self._start_watchdog(ctx)
        elif event is Event.THAW:
            self._stop_watchdog()
            self._frozen = None
        return result

    async def _call_hook(self, ctx: EventContext) -> bool | None:
        hook: Callable[[EventContext], Awaitable[bool | None]] = getattr(self, f"on_{ctx.event.value}")
        with trio.CancelScope() as scope:
            self._hooks.add(scope)
            try:
                return await hook(ctx)
            except Exception as exc:
                log.exception("writer %s: %s failed", self.writer_name, ctx.event.value)
                ctx.set_writer_failure(WriterFailure.NON_RETRYABLE, f"{type(exc).__name__}: {exc}")
                return False
            finally:
                self._hooks.discard(scope)
        ctx.set_writer_failure(WriterFailure.NON_RETRYABLE, f"{ctx.event.value} was cancelled")
        return False

    def _reply(self, ctx: EventContext, result: bool | None) -> WriterEventReply:
        reply: WriterEventReply = {"status": "ok"}
        if ctx.failure is not None or result is False:
            reply = {"status": "failed", "failure": (ctx.failure or WriterFailure.NON_RETRYABLE).value,
                     "message": ctx.message or f"the writer vetoed {ctx.event.value}"}
        components = ctx.components
        if ctx.bcd is not None and components is not None:
            reply["components"] = _only(ctx.bcd, components).to_xml()
        return reply

    # ---- freeze window -------------------------------------------------------------------------------

    def _start_watchdog(self, ctx: EventContext) -> None:
        self._stop_watchdog()
        if self._nursery is None:
            return
        scope = trio.CancelScope()
        self._watchdog = scope
        self._nursery.start_soon(self._watch, ctx, scope)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _watch(self, ctx: EventContext, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(ctx.timeout)
            log.warning("writer %s: no Thaw within %g s of Freeze; thawing", self.writer_name, ctx.timeout)
            async with self._lock:
                if self._frozen is ctx:
                    self._expired = ctx.session
                    await self._auto_abort(ctx)

    async def _auto_abort(self, ctx: EventContext) -> None:
        self._frozen = None
        frame = {"session": ctx.session, "context": ctx.context.value, "backup_type": ctx.backup_type.value,
                 "volumes": ctx.volumes, "set_id": ctx.set_id}
        abort = EventContext(self, Event.ABORT, frame, ctx.bcd)
        with trio.move_on_after(AUTO_ABORT_TIMEOUT):
            await self._call_hook(abort)


async def serve_until_signalled(writer: Writer, state_dir: str | None) -> None:
    """Run `writer` (its `run`) until SIGTERM or SIGINT, then stop it: what a writer command
    (`shadowfs writer sqlite`, `writer run`) does for its whole life."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, state_dir)
            async for signum in signals:
                log.info("writer %s: %s: stopping", writer.writer_name, signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one exception that is not a cancellation in a (nested) group, else the group itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


def _only(bcd: BackupComponents, components: WriterComponents) -> BackupComponents:
    """A BCD holding only one writer's components (what a writer sends back to the requester)."""
    return BackupComponents(select_components=bcd.select_components,
                            bootable_system_state_backup=bcd.bootable_system_state_backup,
                            backup_type=bcd.backup_type, partial_file_support=bcd.partial_file_support,
                            context=bcd.context, restore_type=bcd.restore_type, writers=[components])


class _WriterChannel(Channel):
    """A channel that says when its peer is gone (`lost`), so hooks in progress can be cancelled."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        super().__init__(sock)
        self.lost = trio.Event()

    async def receive(self) -> tuple[frames.Frame, list[int]]:
        try:
            return await super().receive()
        except BaseException:
            self.lost.set()
            raise
