"""Every error shadowfs raises on purpose: one hierarchy, one wire kind each, one exit code mapping.

One job: say what each failure means, what the CLI exits with for it, and what
it is called on the wire, in one place. Modules raise these classes (and
re-export the ones they always had, so `from shadowfs.statedir import
ConfigError` keeps working); nothing else decides an exit code.

```
ShadowfsError                                    kind                exit
├── CliError                                      usage                 2
├── ConfigError (ValueError)                      invalid               2
│   └── DaemonRunning                             daemon_running        2
├── DiffAreaError                                 diff_area             1
├── UnsafePath (ValueError)                       unsafe_path           1
├── WatchUnavailable (OSError)                    watch_unavailable     1
├── WatchOverflow                                 watch_overflow        1
├── DocumentError (ValueError)                    bad_document          1
│   └── RangeError                                bad_ranges            1
├── MediaError                                    media                 1
│   ├── MediaNotFound                             media_not_found       2
│   ├── RecordError (ValueError)                  bad_record            1
│   ├── BackupJobError                            backup_failed         1
│   │   └── BackupRefused                         backup_refused        2
│   └── RestoreError                              restore_failed        1
├── RevertError                                   revert_failed         1
│   └── RevertRefused                             revert_refused        2
├── IpcError                                      ipc                   1
│   ├── ProtocolError (ValueError)                protocol              1
│   ├── RemoteError (RuntimeError)                remote (or the peer's) 1
│   ├── RequestError                              refused               2
│   │   ├── AccessDenied                          denied                2
│   │   ├── TreeBusy                              busy                  2
│   │   ├── SnapshotHeld                          held                  2
│   │   └── SetAborted                            set_aborted           1
│   └── PeerUnreachable                           unreachable           3
│       ├── DaemonNotRunning                      not_running           3
│       ├── DaemonStarting                        starting              4
│       ├── ChannelClosed (ConnectionError)       closed                3
│       └── CallTimeout (TimeoutError)            timeout               3
├── DaemonError                                   daemon_failed         1
│   ├── ChildFailed                               child_failed          1
│   ├── StartupError                              startup_failed        1
│   ├── TakeOverError                             take_over_failed      1
│   └── IOFailed                                  io                    1
└── VssError                                      vss                   1
    ├── RequesterError                            requester_failed      1
    │   ├── RequesterRefused                      requester_refused     2
    │   ├── DaemonUnavailable                     daemon_unavailable    3
    │   └── SnapshotSetAborted (+ SetAborted)     set_aborted           1
    ├── WriterError                               writer_refused        2
    └── ManifestError (ValueError)                bad_manifest          2
```

Exit codes (`exit_code_of`): 0 ok; 1 finished with problems (a failed
component, a writer failure, an aborted set, damaged media, verify or restore
problems, I/O errors); 2 usage or refused (bad command line, invalid names,
sizes or ids, unknown volume, snapshot or image, a busy tree, whatever the
daemon refuses); 3 the daemon cannot be reached (not running, connection
refused, closed without a reply, no reply in time); 4 the daemon is starting
(try again in a moment); 130 interrupted.

Invariants:
- Every class that defines `kind` has its own; a subclass that inherits its
  parent's kind is that same error seen from elsewhere (`SnapshotSetAborted`
  is the requester's `SetAborted`). `__init_subclass__` refuses a duplicate.
- An error reply on the wire is `{"ok": false, "error": message, "kind": kind}`
  (`frames.error_reply`); `from_wire` turns it back into the class registered
  for the kind, or a `RemoteError` that keeps an unknown kind in `.kind`.
- A builtin second base (ValueError, ConnectionError, TimeoutError,
  RuntimeError, OSError) stays where code catches the builtin, so moving a class under
  `ShadowfsError` changed no `except` clause's behaviour.
- Nothing here imports anything from shadowfs: every module may import it.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3
EXIT_STARTING = 4
EXIT_INTERRUPTED = 130

_BY_KIND: dict[str, type[ShadowfsError]] = {}


class ShadowfsError(Exception):
    """Something shadowfs was asked to do failed; the message says what, in one line."""

    kind: str = "error"
    exit_code: ClassVar[int] = EXIT_PROBLEMS

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return  # the parent's error under another name: the parent's kind stays registered
        known = _BY_KIND.get(cls.kind)
        if known is not None and not issubclass(cls, known):
            raise TypeError(f"error kind {cls.kind!r} of {cls.__name__} is taken by {known.__name__}")
        _BY_KIND.setdefault(cls.kind, cls)


_BY_KIND[ShadowfsError.kind] = ShadowfsError


# ---- the command line -----------------------------------------------------------------------------


class CliError(ShadowfsError):
    """The command line asks for something that cannot be done as given (a bad id, a missing
    option, two things that do not go together); nothing was sent to the daemon."""

    kind = "usage"
    exit_code = EXIT_REFUSED


# ---- the state directory (statedir) --------------------------------------------------------------


class ConfigError(ShadowfsError, ValueError):
    """A bad name, path, size or state directory; the message says which and why."""

    kind = "invalid"
    exit_code = EXIT_REFUSED


class DaemonRunning(ConfigError):
    """Another daemon holds the lock on this state directory."""

    kind = "daemon_running"


# ---- the diff area and the file system -------------------------------------------------------------


class DiffAreaError(ShadowfsError):
    """The diff area cannot be opened or used as asked (message says why)."""

    kind = "diff_area"


class UnsafePath(ShadowfsError, ValueError):
    """A path that would leave its tree or go through something that is not a directory."""

    kind = "unsafe_path"


class WatchUnavailable(ShadowfsError, OSError):
    """A fanotify watch of a backing filesystem cannot be set up or used (not root, a kernel or a
    filesystem without file-handle reporting, too many watches); errno and message say which."""

    kind = "watch_unavailable"


class WatchOverflow(ShadowfsError):
    """A fanotify watch lost events (its queue overflowed): what changed meanwhile must be found by
    scanning the backing directory instead."""

    kind = "watch_overflow"


# ---- writers' documents ----------------------------------------------------------------------------


class DocumentError(ShadowfsError, ValueError):
    """A WMD or BCD (or an argument meant for one) is not acceptable; the message says where and why."""

    kind = "bad_document"


class RangeError(DocumentError):
    """A range string or ranges file is not acceptable; the message names the range and the rule."""

    kind = "bad_ranges"


# ---- backup media, backup and restore --------------------------------------------------------------


class MediaError(ShadowfsError):
    """Backup media or an image on it is missing, incomplete, corrupt or unusable; the message says
    which image and file."""

    kind = "media"


class MediaNotFound(MediaError):
    """The media directory, or an image the caller named, is not there (or the name is no image id)."""

    kind = "media_not_found"
    exit_code = EXIT_REFUSED


class RecordError(MediaError, ValueError):
    """A manifest record is malformed; the message names the field and the rule."""

    kind = "bad_record"


class BackupJobError(MediaError):
    """A backup or restore job failed (a writer's document, ranges or answer); nothing of the failed
    image was completed."""

    kind = "backup_failed"


class BackupRefused(BackupJobError):
    """A backup or restore job was refused before it started (no base image, an unknown volume or
    backup type, new targets without writers)."""

    kind = "backup_refused"
    exit_code = EXIT_REFUSED


class RestoreError(MediaError):
    """The restore could not be done as the image says (target in the way, unsafe path, I/O error)."""

    kind = "restore_failed"


# ---- reverting a volume to a snapshot (restore.revert) ---------------------------------------------


class RevertError(ShadowfsError):
    """A revert stopped part way (a file busy, the disk full, the volume changed meanwhile): the
    message says where, what was done and what was left; the snapshot taken before it holds the
    volume as it was."""

    kind = "revert_failed"


class RevertRefused(RevertError):
    """A revert that cannot be done as asked (a path damaged in the snapshot, its directory gone
    from the volume): refused before anything was changed."""

    kind = "revert_refused"
    exit_code = EXIT_REFUSED


# ---- frames between processes (ipc) ----------------------------------------------------------------


class IpcError(ShadowfsError):
    """Talking to another shadowfs process failed."""

    kind = "ipc"


class ProtocolError(IpcError, ValueError):
    """The peer sent something that is not a valid frame."""

    kind = "protocol"


class RemoteError(IpcError, RuntimeError):
    """The peer answered a request with `"ok": false`; the message is its error, `.kind` its kind
    (kept as sent, also when this process has no class for it)."""

    kind = "remote"

    def __init__(self, message: str = "request failed", kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class RequestError(IpcError):
    """Raised by a request handler for an expected failure (the request is refused): becomes the
    error reply, no traceback; a client of the daemon raises it again from that reply."""

    kind = "refused"
    exit_code = EXIT_REFUSED


class AccessDenied(RequestError):
    """This user may not use the daemon's socket (only root and the daemon's own user may)."""

    kind = "denied"


class TreeBusy(RequestError):
    """`volume add` was refused because processes hold files, working or root directories or
    memory mappings in the backing directory; the message names them (`volume add --force` adds
    anyway)."""

    kind = "busy"


class SnapshotHeld(RequestError):
    """A held snapshot (`snapshot hold`) was to be deleted without force; nothing was deleted."""

    kind = "held"


class SetAborted(RequestError):
    """The snapshot set was not made; the message names every writer or volume that failed. Nothing
    of the set exists, every writer was thawed or aborted."""

    kind = "set_aborted"
    exit_code = EXIT_PROBLEMS


class PeerUnreachable(IpcError):
    """The other process cannot be reached: not running, gone, or silent past the time limit."""

    kind = "unreachable"
    exit_code = EXIT_UNREACHABLE


class DaemonNotRunning(PeerUnreachable):
    """No daemon listens on the state directory's socket (`shadowfs daemon is not running on state
    DIR`)."""

    kind = "not_running"


class DaemonStarting(PeerUnreachable):
    """The daemon runs but is not ready yet: it does not listen yet, or a volume the request needs is
    not protected yet. Trying again in a moment is the answer."""

    kind = "starting"
    exit_code = EXIT_STARTING


class ChannelClosed(PeerUnreachable, ConnectionError):
    """The peer closed the connection (at a frame boundary, or while a call waited)."""

    kind = "closed"


class CallTimeout(PeerUnreachable, TimeoutError):
    """No reply arrived in time."""

    kind = "timeout"


# ---- the daemon and its processes ------------------------------------------------------------------


class DaemonError(ShadowfsError):
    """The daemon, or a process it supervises, could not do what was asked."""

    kind = "daemon_failed"


class ChildFailed(DaemonError):
    """A mount process or the snapshot browser could not be started, did not become ready, or failed
    or did not answer a request of the daemon."""

    kind = "child_failed"


class StartupError(DaemonError):
    """The mount process cannot start (the message says why)."""

    kind = "startup_failed"


class TakeOverError(DaemonError):
    """A new process could not take over a mount's live FUSE connection (pyfuse3 without the handoff
    patch, a descriptor that is not a FUSE connection, libfuse refusing the session, or the kernel
    refusing to resend the requests in flight; the message says which)."""

    kind = "take_over_failed"


class IOFailed(DaemonError):
    """An operating-system call failed while the daemon carried out a request (the message names the
    operation, the file and the error)."""

    kind = "io"


# ---- the VSS service: requesters and writers --------------------------------------------------------


class VssError(ShadowfsError):
    """A requester or writer could not do its part of the VSS sequence."""

    kind = "vss"


class RequesterError(VssError):
    """A requester call failed; the message says why (from the daemon where it came from there)."""

    kind = "requester_failed"


class RequesterRefused(RequesterError):
    """A requester call was refused: by the daemon (unknown volume or snapshot, a bad field) or
    here (calls out of order, a volume that is not a shadowfs volume)."""

    kind = "requester_refused"
    exit_code = EXIT_REFUSED


class DaemonUnavailable(RequesterError):
    """The requester's daemon is not running, closed the session, or did not answer in time."""

    kind = "daemon_unavailable"
    exit_code = EXIT_UNREACHABLE


class SnapshotSetAborted(SetAborted, RequesterError):
    """`do_snapshot_set` failed: no snapshot of the set exists, every writer was thawed or aborted
    (the requester's `SetAborted`: also a `RequesterError`)."""


class WriterError(VssError):
    """The daemon refused the writer (protocol version, duplicate instance, bad identity)."""

    kind = "writer_refused"
    exit_code = EXIT_REFUSED


class ManifestError(VssError, ValueError):
    """An express writer's manifest (TOML) cannot be used: unreadable, not TOML, an unknown key, a
    value of the wrong type or out of range; the message names the file, the key and the problem."""

    kind = "bad_manifest"
    exit_code = EXIT_REFUSED


# ---- the one mapping -------------------------------------------------------------------------------


def exit_code_of(exc: BaseException) -> int:
    """The CLI's exit code for `exc` (see the module docstring); the only place that decides it."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ShadowfsError):
        return exc.exit_code
    return EXIT_PROBLEMS  # an I/O error (OSError) or anything else that ended a command


def kind_of(exc: BaseException) -> str:
    """The wire kind of `exc`: its own for a ShadowfsError, else "interrupted", "io" or "internal"."""
    if isinstance(exc, ShadowfsError):
        return exc.kind
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError):
        return IOFailed.kind
    return "internal"


def message_of(exc: BaseException) -> str:
    """`exc` as one line (whitespace folded); its class name when it has no message."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return " ".join(str(exc).split()) or type(exc).__name__


def class_for(kind: str) -> type[ShadowfsError] | None:
    """The class registered for a wire kind, or None."""
    return _BY_KIND.get(kind)


def from_wire(message: str, kind: object) -> ShadowfsError:
    """The exception an error reply stands for: the class registered for `kind`, or a RemoteError
    that keeps the kind when it is unknown (or missing: "remote")."""
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None or issubclass(cls, RemoteError):
        return RemoteError(message, kind if isinstance(kind, str) else None)
    return cls(message)
