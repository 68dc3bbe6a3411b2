"""The daemon's registry of connected writers and the delivery of one event to one writer.

One job: know which writers are registered (identity, connection, state,
failure), and turn "send event E to writer W" into a bounded call whose every
outcome (answer, veto, timeout, disconnect, garbage) becomes a VSS writer state
and failure reason.

Invariants:
- `WriterRecord.deliver` never waits longer than its timeout (plus one second
  for the send itself) and never raises for anything the writer does: a writer
  that is gone, slow, or answers nonsense is a failure with a reason.
- A failed state (`failed_at_*`) is never overwritten by Abort or
  BackupShutdown; the next sequence (PrepareForBackup / PrepareForSnapshot /
  PreRestore) starts from a clean state.
- One connected writer per instance id; a writer's record outlives its
  connection for as long as a session refers to it (so a requester can still
  read why it failed), and the last `DEPARTED_KEPT` departed writers are listed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os

import trio

from shadowfs import statedir
from shadowfs.documents.enums import UsageType, WriterFailure, WriterState
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.vss_messages import (
    EventPayload,
    LastFailure,
    WriterDescription,
    WriterEventRequest,
    WriterIdentityFields,
    WriterResult,
)
from shadowfs.service import protocol
from shadowfs.service.protocol import EVENT_STATES, KEEPS_FAILURE, Event

log = logging.getLogger(__name__)

DEPARTED_KEPT = 32


@dataclasses.dataclass(frozen=True)
class WriterIdentity:
    """Who a writer is (VSS: class id, instance id, instance name, writer name, usage type)."""

    class_id: str
    instance_id: str
    instance_name: str
    writer_name: str
    usage_type: UsageType

    @classmethod
    def from_request(cls, request: frames.Frame) -> WriterIdentity:
        class_id = protocol.guid(request, "class_id")
        instance_id = protocol.guid(request, "instance_id")
        assert class_id is not None and instance_id is not None
        writer_name = protocol.text(request, "writer_name", limit=256)
        if not writer_name.strip():
            raise frames.RequestError("request field 'writer_name' must not be empty")
        return cls(class_id, instance_id, protocol.text(request, "instance_name", default="", limit=256),
                   writer_name, protocol.enum_field(request, "usage_type", UsageType, UsageType.USER_DATA))

    def to_json(self) -> WriterIdentityFields:
        return {"class_id": self.class_id, "instance_id": self.instance_id,
                "instance_name": self.instance_name, "writer_name": self.writer_name,
                "usage_type": self.usage_type.value}


@dataclasses.dataclass
class Outcome:
    """What one writer did with one event."""

    writer: WriterRecord
    event: Event
    ok: bool
    failure: WriterFailure | None = None
    message: str = ""
    components: str | None = None
    metadata: str | None = None

    def to_json(self) -> WriterResult:
        return {**self.writer.identity.to_json(), "event": self.event.value, "ok": self.ok,
                "state": self.writer.state.value,
                "failure": self.failure.value if self.failure else None, "message": self.message,
                "components": self.components}

    def describe(self) -> str:
        return (f"writer {self.writer.identity.writer_name!r} (instance {self.writer.identity.instance_id}) "
                f"failed at {self.event.value}: {self.failure.value if self.failure else 'error'}"
                f"{' (' + self.message + ')' if self.message else ''}")


class WriterRecord:
    """One registered writer: identity, connection, VSS state and failure, the session that owns it."""

    def __init__(self, identity: WriterIdentity, channel: Channel, pid: int, freeze_timeout: float):
        self.identity = identity
        self.channel = channel
        self.pid = pid
        self.freeze_timeout = freeze_timeout
        self.connected = True
        self.registered = statedir.utc_now()
        self.state = WriterState.STABLE
        self.failure: WriterFailure | None = None
        self.last_failure: LastFailure | None = None
        self.last_event: Event | None = None
        self.paths: list[str] | None = None   # what the writer said it touches, from its last Identify
        self.owner: object | None = None      # the session that claimed it for a sequence

    def describe(self) -> WriterDescription:
        return {**self.identity.to_json(), "pid": self.pid, "connected": self.connected,
                "registered": self.registered, "freeze_timeout": self.freeze_timeout,
                "state": self.state.value, "failure": self.failure.value if self.failure else None,
                "last_event": self.last_event.value if self.last_event else None,
                "last_failure": self.last_failure, "paths": self.paths,
                "session": getattr(self.owner, "session_id", None)}

    def touches(self, roots: list[str]) -> bool:
        """Whether any path the writer declared lies in one of `roots` (unknown paths: no)."""
        return any(statedir.is_within(path, root) for path in self.paths or () for root in roots)

    def begin_sequence(self) -> None:
        """A new backup or restore sequence starts: forget the failure of the last one."""
        self.state = WriterState.STABLE
        self.failure = None

    async def deliver(self, event: Event, payload: EventPayload, timeout: float) -> Outcome:
        """Send one event and wait (bounded) for the answer; update state; never raises."""
        self.last_event = event
        if not self.connected:
            return self._settle(Outcome(self, event, False, WriterFailure.NON_RETRYABLE,
                                        "the writer has disconnected"))
        frame: WriterEventRequest = {**payload, "op": "writer_event", "event": event.value,
                                     "timeout": timeout}
        outcome: Outcome | None = None
        with trio.move_on_after(timeout + 1.0):
            outcome = await self._call(event, frame, timeout)
        if outcome is None:
            outcome = Outcome(self, event, False, WriterFailure.TIMEOUT,
                              f"no answer to {event.value} within {timeout:g} s")
        return self._settle(outcome)

    async def _call(self, event: Event, frame: WriterEventRequest, timeout: float) -> Outcome:
        try:
            reply = await self.channel.call(frame, timeout=timeout)
        except frames.CallTimeout:
            return Outcome(self, event, False, WriterFailure.TIMEOUT,
                           f"no answer to {event.value} within {timeout:g} s")
        except (frames.ChannelClosed, OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            return Outcome(self, event, False, WriterFailure.NON_RETRYABLE,
                           f"the writer disconnected during {event.value}")
        except frames.RemoteError as exc:
            return Outcome(self, event, False, WriterFailure.NON_RETRYABLE, _one_line(str(exc)))
        except frames.ProtocolError as exc:
            return Outcome(self, event, False, WriterFailure.NON_RETRYABLE,
                           f"{event.value} could not be sent: {exc}")
        return self._read_reply(event, reply)

    def _read_reply(self, event: Event, reply: frames.Frame) -> Outcome:
        """The writer's `WriterEventReply`, checked field by field; anything malformed is a failure."""
        try:
            status = reply.get("status")
            message = _one_line(protocol.text(reply, "message", default="", limit=protocol.MAX_TEXT * 4))
            components = protocol.document(reply, "components")
            metadata = protocol.document(reply, "metadata")
            paths = protocol.string_list(reply, "paths", limit=protocol.MAX_PATHS, optional=True)
            if status == "ok":
                if paths is not None:
                    self.paths = [os.path.normpath(p) for p in paths if os.path.isabs(p)]
                return Outcome(self, event, True, None, message, components, metadata)
            if status != "failed":
                raise frames.RequestError("field 'status' must be 'ok' or 'failed'")
            failure = protocol.enum_field(reply, "failure", WriterFailure, WriterFailure.NON_RETRYABLE)
            return Outcome(self, event, False, failure, message, components, metadata)
        except frames.RequestError as exc:
            return Outcome(self, event, False, WriterFailure.NON_RETRYABLE,
                           f"malformed answer to {event.value}: {exc}")

    def _settle(self, outcome: Outcome) -> Outcome:
        ok_state, failed_state = EVENT_STATES[outcome.event]
        if outcome.ok:
            if ok_state is not None and not (outcome.event in KEEPS_FAILURE and self.state.is_failed):
                self.state = ok_state
            return outcome
        if failed_state is not None and not self.state.is_failed:
            self.state = failed_state
            self.failure = outcome.failure
        self.last_failure = {"event": outcome.event.value,
                             "failure": outcome.failure.value if outcome.failure else None,
                             "message": outcome.message, "time": statedir.utc_now()}
        log.warning("%s", outcome.describe())
        return outcome


def _one_line(text: str) -> str:
    return " ".join(text.split())[: protocol.MAX_TEXT]


class Registry:
    """Every connected writer by instance id, plus a short memory of departed ones."""

    def __init__(self) -> None:
        self.writers: dict[str, WriterRecord] = {}
        self.departed: collections.deque[WriterRecord] = collections.deque(maxlen=DEPARTED_KEPT)

    def register(self, request: frames.Frame, channel: Channel, pid: int) -> WriterRecord:
        identity = WriterIdentity.from_request(request)
        freeze_timeout = protocol.seconds(request, "freeze_timeout", protocol.DEFAULT_FREEZE_TIMEOUT)
        assert freeze_timeout is not None
        old = self.writers.get(identity.instance_id)
        if old is not None and old.connected:
            raise frames.RequestError(f"a writer with instance id {identity.instance_id} is already "
                                   f"registered (pid {old.pid})")
        if len(self.writers) >= protocol.MAX_WRITERS:
            raise frames.RequestError(f"too many writers registered (limit {protocol.MAX_WRITERS})")
        record = WriterRecord(identity, channel, pid, freeze_timeout)
        self.writers[identity.instance_id] = record
        log.info("writer %r registered (class %s, instance %s %r, pid %d, freeze timeout %g s)",
                 identity.writer_name, identity.class_id, identity.instance_id, identity.instance_name,
                 pid, freeze_timeout)
        return record

    def unregister(self, record: WriterRecord) -> None:
        record.connected = False
        if self.writers.get(record.identity.instance_id) is record:
            del self.writers[record.identity.instance_id]
        self.departed.append(record)
        log.info("writer %r (instance %s, pid %d) disconnected", record.identity.writer_name,
                 record.identity.instance_id, record.pid)

    def select(self, instance_ids: list[str]) -> list[WriterRecord]:
        """The records of the given writers; an unknown id is an error naming it."""
        chosen = []
        for instance_id in dict.fromkeys(instance_ids):
            record = self.writers.get(instance_id)
            if record is None:
                raise frames.RequestError(f"no writer with instance id {instance_id} is registered")
            chosen.append(record)
        return chosen

    def describe(self, *, departed: bool = False) -> list[WriterDescription]:
        records = list(self.writers.values()) + (list(self.departed) if departed else [])
        return [r.describe() for r in sorted(records, key=lambda r: (r.identity.writer_name,
                                                                      r.identity.instance_id))]
