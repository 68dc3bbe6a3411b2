"""The writer/requester wire protocol of the daemon socket: versions, events, limits, field checks.

One job: say what a well-formed service request is, in one place that the daemon
(`service.broker`), the writer library and the requester library all import.
Nothing here does I/O.

Frames are `shadowfs.frames` frames (4-byte length + one JSON object, at most
`frames.MAX_FRAME` bytes). Every service request may carry `"protocol": "1.0"`;
`hello` and `writer_register` must. A different *major* version is refused
with an error reply naming both versions; a newer minor version is accepted
(minor versions only add optional fields).

Writer -> daemon:
    {"op": "writer_register", "protocol", "class_id", "instance_id", "instance_name",
     "writer_name", "usage_type", "freeze_timeout"?}       -> {"protocol", "writer": {...}}
Daemon -> writer (on the writer's own connection):
    {"op": "writer_event", "event": EVENT, "session", "context", "backup_type",
     "partial_file_support", "volumes": [paths], "set_id"? (snapshot creation), "bcd": XML|null,
     "timeout"}
        -> {"status": "ok"|"failed", "failure"?, "message"?, "components"?: XML,
            "metadata"?: XML, "paths"?: [paths]}
Requester -> daemon: see `service.broker.Service` (gather_writer_metadata,
    prepare_for_backup, snapshot_create, backup_complete, abort_backup,
    backup_shutdown, pre_restore, post_restore, gather_writer_status, writers,
    snapshot_properties).

Each of these messages is a type in `shadowfs.ipc.messages` (`WriterRegisterRequest`,
`WriterEventRequest`, `WriterEventReply`, `SequenceRequest`, `SnapshotCreateRequest`, ...);
the checks below are what those types promise.

Invariants:
- Every event a writer gets has a bounded wait on the daemon side
  (`EVENT_TIMEOUT`, the freeze timeout for Freeze), and every field read
  from a peer is type- and size-checked here before use.
"""

from __future__ import annotations

import enum
import math
import uuid
from typing import Any

from shadowfs.documents.enums import SnapshotContext, WriterState
from shadowfs.ipc import frames

PROTOCOL = "1.0"
PROTOCOL_MAJOR = 1

MAX_VOLUMES_PER_SET = 64                 # VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED
DEFAULT_MAX_SNAPSHOTS_PER_VOLUME = 512   # VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED
MAX_SNAPSHOTS_ENV = "SHADOWFS_MAX_SNAPSHOTS_PER_VOLUME"
DEFAULT_FREEZE_TIMEOUT = 60.0            # VSS: Freeze to Thaw
MIN_TIMEOUT = 0.05
MAX_TIMEOUT = 3600.0
EVENT_TIMEOUT = 120.0                    # every other event (identify, prepare, thaw, restore, ...)
ABORT_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
MAX_IN_FLIGHT = 16                       # requests one connection may have outstanding
MAX_WRITERS = 128
MAX_TEXT = 1024                          # names, messages
MAX_PATHS = 1024                         # paths a writer says it touches

PROVIDER_ID = "b5946137-7b9f-4925-af80-51abd60b20d5"  # the shadowfs provider (the volsnap of VSS)


class Event(enum.StrEnum):
    """A writer event (VSS: CVssWriter::On*)."""

    IDENTIFY = "identify"
    PREPARE_BACKUP = "prepare_backup"
    PREPARE_SNAPSHOT = "prepare_snapshot"
    FREEZE = "freeze"
    THAW = "thaw"
    POST_SNAPSHOT = "post_snapshot"
    ABORT = "abort"
    BACKUP_COMPLETE = "backup_complete"
    BACKUP_SHUTDOWN = "backup_shutdown"
    PRE_RESTORE = "pre_restore"
    POST_RESTORE = "post_restore"


# state after the event succeeded (None: unchanged), state when it failed; a failed state survives
# a successful Identify, Abort or BackupShutdown (KEEPS_FAILURE)
EVENT_STATES: dict[Event, tuple[WriterState | None, WriterState | None]] = {
    Event.IDENTIFY: (None, WriterState.FAILED_AT_IDENTIFY),
    Event.PREPARE_BACKUP: (WriterState.STABLE, WriterState.FAILED_AT_PREPARE_BACKUP),
    Event.PREPARE_SNAPSHOT: (WriterState.WAITING_FOR_FREEZE, WriterState.FAILED_AT_PREPARE_SNAPSHOT),
    Event.FREEZE: (WriterState.WAITING_FOR_THAW, WriterState.FAILED_AT_FREEZE),
    Event.THAW: (WriterState.WAITING_FOR_POST_SNAPSHOT, WriterState.FAILED_AT_THAW),
    Event.POST_SNAPSHOT: (WriterState.WAITING_FOR_BACKUP_COMPLETE, WriterState.FAILED_AT_POST_SNAPSHOT),
    Event.ABORT: (WriterState.STABLE, None),
    Event.BACKUP_COMPLETE: (WriterState.STABLE, WriterState.FAILED_AT_BACKUP_COMPLETE),
    Event.BACKUP_SHUTDOWN: (WriterState.STABLE, WriterState.FAILED_AT_BACKUP_SHUTDOWN),
    Event.PRE_RESTORE: (WriterState.STABLE, WriterState.FAILED_AT_PRE_RESTORE),
    Event.POST_RESTORE: (WriterState.STABLE, WriterState.FAILED_AT_POST_RESTORE),
}


KEEPS_FAILURE = frozenset({Event.IDENTIFY, Event.ABORT, Event.BACKUP_SHUTDOWN})


class SnapshotAttr(enum.IntFlag):
    """VSS_VOLSNAP_ATTR_* bits that mean something for shadowfs snapshots."""

    PERSISTENT = 0x1
    NO_AUTORECOVERY = 0x2
    CLIENT_ACCESSIBLE = 0x4
    NO_AUTO_RELEASE = 0x8
    NO_WRITERS = 0x10
    DIFFERENTIAL = 0x20000
    EXPOSED_LOCALLY = 0x100000
    FILE_SHARE = 0x4000000


def context_attributes(context: SnapshotContext) -> SnapshotAttr:
    """The attribute bits of a context, as VSS defines VSS_CTX_* from VSS_VOLSNAP_ATTR_*."""
    attrs = {
        SnapshotContext.BACKUP: SnapshotAttr(0),
        SnapshotContext.FILE_SHARE_BACKUP: SnapshotAttr.NO_WRITERS,
        SnapshotContext.NAS_ROLLBACK: (SnapshotAttr.PERSISTENT | SnapshotAttr.NO_AUTO_RELEASE
                                       | SnapshotAttr.NO_WRITERS),
        SnapshotContext.APP_ROLLBACK: SnapshotAttr.PERSISTENT | SnapshotAttr.NO_AUTO_RELEASE,
        SnapshotContext.CLIENT_ACCESSIBLE: (SnapshotAttr.PERSISTENT | SnapshotAttr.CLIENT_ACCESSIBLE
                                            | SnapshotAttr.NO_AUTO_RELEASE | SnapshotAttr.NO_WRITERS),
        SnapshotContext.CLIENT_ACCESSIBLE_WRITERS: (SnapshotAttr.PERSISTENT | SnapshotAttr.CLIENT_ACCESSIBLE
                                                    | SnapshotAttr.NO_AUTO_RELEASE),
    }[context]
    # every shadowfs snapshot is copy-on-write and shown by the browser
    return attrs | SnapshotAttr.DIFFERENTIAL | SnapshotAttr.EXPOSED_LOCALLY


# --- field checks (raise frames.RequestError, which becomes the error reply) ------------------------


def check_protocol(request: frames.Frame, *, required: bool = False) -> str:
    """The request's protocol version; refuses a missing (when required) or foreign major version."""
    value = request.get("protocol")
    if value is None and not required:
        return PROTOCOL
    if not isinstance(value, str) or len(value) > 16:
        raise frames.RequestError(f"request field 'protocol' must be a version string such as {PROTOCOL!r}")
    major, _, minor = value.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise frames.RequestError(f"malformed protocol version {value!r} (expected MAJOR.MINOR)")
    if int(major) != PROTOCOL_MAJOR:
        raise frames.RequestError(f"protocol version {value} is not supported: this daemon speaks "
                               f"{PROTOCOL_MAJOR}.x ({PROTOCOL})")
    return value


def text(request: frames.Frame, name: str, *, default: str | None = None, limit: int = MAX_TEXT) -> str:
    value = request.get(name, default)
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise frames.RequestError(f"request field {name!r} must be a string of at most {limit} characters")
    return value


LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_LABEL = 64


def label(request: frames.Frame, name: str = "label") -> str | None:
    """An optional set label: 1..64 of letters, digits, '.', '_' and '-' (it names the sets one job
    made, as `timeline` for the snapshot timer, so that job prunes only its own)."""
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL or set(value) - LABEL_CHARS:
        raise frames.RequestError(f"request field {name!r} must be a label of 1 to {MAX_LABEL} letters, "
                                  f"digits, '.', '_' or '-', not {value!r}")
    return value


def guid(request: frames.Frame, name: str, *, optional: bool = False) -> str | None:
    """A UUID field in canonical lower-case form."""
    value = request.get(name)
    if value is None and optional:
        return None
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise frames.RequestError(f"request field {name!r} must be a UUID")


def seconds(request: frames.Frame, name: str, default: float | None) -> float | None:
    value = request.get(name)
    if value is None:
        return default
    if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
            or not MIN_TIMEOUT <= value <= MAX_TIMEOUT):
        raise frames.RequestError(f"request field {name!r} must be a number of seconds in "
                               f"[{MIN_TIMEOUT:g}, {MAX_TIMEOUT:g}]")
    return float(value)


def flag(request: frames.Frame, name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise frames.RequestError(f"request field {name!r} must be true or false")
    return value


def enum_field(request: frames.Frame, name: str, kind: type[enum.StrEnum], default: Any) -> Any:
    value = request.get(name, default)
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except (ValueError, TypeError):
        choices = ", ".join(m.value for m in kind)
        raise frames.RequestError(f"request field {name!r} must be one of: {choices}") from None


def string_list(request: frames.Frame, name: str, *, limit: int, optional: bool = False,
                item_limit: int = 4096) -> list[str] | None:
    value = request.get(name)
    if value is None and optional:
        return None
    if (not isinstance(value, list) or len(value) > limit
            or not all(isinstance(v, str) and 0 < len(v) <= item_limit and "\0" not in v for v in value)):
        raise frames.RequestError(
            f"request field {name!r} must be a list of at most {limit} non-empty strings")
    return value


def document(request: frames.Frame, name: str) -> str | None:
    """An optional XML document carried as a string (its size is bounded by the frame cap)."""
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise frames.RequestError(f"request field {name!r} must be an XML document (a string)")
    return value
