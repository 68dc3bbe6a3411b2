"""The blocking client of the daemon socket: one connection, requests and their replies, no trio.

One job: talk to the daemon on `<state>/daemon.sock` (`statedir.socket_path`)
for the CLI, backup jobs and the blocking requester (`SyncBackupComponents`),
which start in a fraction of the time an import of trio takes.

    with DaemonClient(state_dir) as daemon:
        volumes = daemon.call({"op": "volume_list"})["volumes"]
    reply = request(state_dir, {"op": "status"})          # one request, one connection

Invariants:
- A socket nobody listens on (or no socket) raises `DaemonNotRunning` with the
  message "shadowfs daemon is not running on state DIR", or `DaemonStarting`
  ("... is starting ...", exit code 4) while a daemon holds the state
  directory's lock but does not listen yet; a socket this user may not open
  raises `AccessDenied`.
- Each request carries the next id of the connection; frames that are not its
  reply (events, late replies) are skipped and their descriptors closed. An
  error reply without an id is about the connection as a whole and answers
  the request in flight.
- An error reply is raised as the class registered for its kind
  (`errors.from_wire`): a refusal of the daemon reaches the caller as the
  class, and so the exit code, the daemon meant. The daemon closing the
  connection first raises `ChannelClosed`, no reply within the timeout
  `CallTimeout` (both: the daemon is unreachable), a malformed reply
  `ProtocolError`.
- Descriptors that come with a successful reply (SCM_RIGHTS) belong to the
  caller of `call_fds`; those of error replies and skipped frames are closed.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import cast, overload

from shadowfs import statedir
from shadowfs.errors import (
    AccessDenied,
    CallTimeout,
    ChannelClosed,
    DaemonNotRunning,
    DaemonStarting,
    PeerUnreachable,
    ProtocolError,
    from_wire,
)
from shadowfs.ipc import frames, messages, vss_messages
from shadowfs.ipc.frames import Frame, Message

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 300.0


def connect(state_dir: str, timeout: float = REQUEST_TIMEOUT) -> socket.socket:
    """A blocking socket connected to the daemon of `state_dir` (the caller closes it)."""
    path = statedir.socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        pid = statedir.daemon_holding_lock(state_dir)
        if pid is not None:
            who = f" (pid {pid})" if pid else ""
            raise DaemonStarting(f"shadowfs daemon{who} is starting on state {state_dir}; "
                                 "try again in a moment") from None
        raise DaemonNotRunning(f"shadowfs daemon is not running on state {state_dir}") from None
    except PermissionError:
        sock.close()
        hint = "" if os.geteuid() == 0 else " (the daemon's socket is for root and its group: run as root)"
        raise AccessDenied(f"permission denied: cannot connect to {path}{hint}") from None
    except OSError as exc:  # a full backlog past the timeout, a path too long for a socket...
        sock.close()
        raise PeerUnreachable(f"cannot connect to the shadowfs daemon at {path}: "
                              f"{exc.strerror or exc}") from None
    return sock


class DaemonClient:
    """One connection to the daemon; one request at a time (use it from one thread)."""

    def __init__(self, state_dir: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self.state_dir = state_dir
        self.timeout = timeout
        self.sock = connect(state_dir, timeout)
        self._ids = itertools.count(1)

    def call(self, request: Message, timeout: float | None = None) -> Frame:
        """Send `request`, return the fields of its successful reply (without "id" and "ok")."""
        reply, fds = self.call_fds(request, timeout=timeout)
        frames.close_fds(fds)
        return reply

    def call_fds(self, request: Message, fds: Sequence[int] = (),
                 timeout: float | None = None) -> tuple[Frame, list[int]]:
        """`call`, sending `fds` along, and the descriptors of the reply (the caller's to close)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        request_id = next(self._ids)
        try:
            self.sock.settimeout(limit)
            frames.send_frame(self.sock, {**request, "id": request_id}, fds)
            while True:
                # the limit is for the whole call, however many events arrive first
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                reply, reply_fds = frames.recv_frame(self.sock)
                if reply.get("id") == request_id or (reply.get("id") is None and reply.get("ok") is False):
                    break
                frames.close_fds(reply_fds)
        except (ChannelClosed, BrokenPipeError, ConnectionResetError):
            raise ChannelClosed("shadowfs daemon closed the connection without replying") from None
        except TimeoutError:
            raise CallTimeout(f"no reply to {request.get('op')!r} from the shadowfs daemon "
                              f"within {limit:g} s") from None
        except ProtocolError as exc:
            raise ProtocolError(f"bad reply from the shadowfs daemon: {exc}") from None
        if not reply.get("ok", False):
            frames.close_fds(reply_fds)
            raise from_wire(str(reply.get("error", "request failed")), reply.get("kind"))
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}, reply_fds

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# `request` knows the reply of each op the CLI sends, so mypy checks what the commands read of it.
# The daemon's replies are trusted: they are typed here, not checked again (messages module docstring).


@overload
def request(state_dir: str, obj: messages.VolumeAddRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.VolumeAddReply: ...
@overload
def request(state_dir: str, obj: messages.VolumeListRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.VolumeListReply: ...
@overload
def request(state_dir: str, obj: messages.VolumeRemoveRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.VolumeRemoveReply: ...
@overload
def request(state_dir: str, obj: vss_messages.SnapshotCreateRequest,
            timeout: float = REQUEST_TIMEOUT) -> vss_messages.SnapshotCreateReply: ...
@overload
def request(state_dir: str, obj: messages.SnapshotListRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.SnapshotListReply: ...
@overload
def request(state_dir: str, obj: messages.SnapshotDeleteRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.SnapshotDeleteReply: ...
@overload
def request(state_dir: str, obj: messages.SnapshotDamageRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.SnapshotDamageReply: ...
@overload
def request(state_dir: str, obj: messages.SnapshotExposeRequest | messages.SnapshotUnexposeRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.ExposedSnapshot: ...
@overload
def request(state_dir: str, obj: messages.SnapshotHoldRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.SnapshotHoldReply: ...
@overload
def request(state_dir: str, obj: messages.SnapshotPruneRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.SnapshotPruneReply: ...
@overload
def request(state_dir: str, obj: messages.VolumeSetRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.VolumeSetReply: ...
@overload
def request(state_dir: str, obj: messages.StatusRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.StatusReply: ...


@overload
def request(state_dir: str, obj: messages.ShutdownRequest,
            timeout: float = REQUEST_TIMEOUT) -> messages.ShutdownReply: ...
@overload
def request(state_dir: str, obj: vss_messages.WritersRequest,
            timeout: float = REQUEST_TIMEOUT) -> vss_messages.WritersReply: ...


def request(state_dir: str, obj: Message, timeout: float = REQUEST_TIMEOUT) -> Message:
    """One request on a connection of its own; the fields of its successful reply."""
    with DaemonClient(state_dir, timeout) as daemon:
        return daemon.call(obj)


def request_fds(state_dir: str, obj: messages.VolumeBackingRequest,
                timeout: float = REQUEST_TIMEOUT) -> tuple[messages.VolumeBackingReply, list[int]]:
    """`request` for the one op whose reply carries a descriptor (`volume_backing`): the reply and
    the descriptors that came with it (the caller's to close)."""
    with DaemonClient(state_dir, timeout) as daemon:
        reply, fds = daemon.call_fds(obj)
    return cast(messages.VolumeBackingReply, reply), fds
