"""Frames between shadowfs processes, without trio: the wire format and a blocking API.

One job: turn one JSON object (and, optionally, file descriptors) into a
frame and back, and move frames over a blocking Unix stream socket
(`send_frame`, `recv_frame`), for the CLI and the blocking requester, which
start in a fraction of the time an import of trio takes. `shadowfs.ipc`
builds its trio `Channel` on these pieces and re-exports them.

Wire format: a 4-byte big-endian length, then that many bytes of UTF-8 JSON
holding one object. Descriptors ride along with the frame as SCM_RIGHTS
ancillary data on its first `sendmsg`.

Invariants:
- A frame is at most `MAX_FRAME` bytes of JSON; bigger ones are refused on
  both sides with `ProtocolError`.
- Every read is a `recvmsg` for at most the bytes the current frame still
  lacks, so a read never crosses into the next frame and every descriptor
  that arrives while a frame is read belongs to that frame. The kernel attaches
  descriptors to the first segment of the sendmsg that carried them, and the
  sender only ever sends descriptors with the first bytes of their frame.
- Received descriptors are owned by the receiver; on any error they are closed
  before the error is raised, so nothing leaks.
- Anything malformed from the peer raises `ProtocolError` (a subclass of
  `ValueError`); servers catch it per connection and never crash on it.

Request/reply convention (ARCHITECTURE.md): a request carries an integer-or-string
`"id"`; its reply carries the same id and `"ok": true` plus fields, or
`"ok": false, "error": "<one line>", "kind": "<error kind>"` (`error_reply`;
`shadowfs.errors.from_wire` turns it back into an exception). A frame without
an id is an event.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any

# the errors of frames, defined with every other shadowfs error and re-exported here
from shadowfs.errors import CallTimeout as CallTimeout
from shadowfs.errors import ChannelClosed as ChannelClosed
from shadowfs.errors import ProtocolError as ProtocolError
from shadowfs.errors import RemoteError as RemoteError
from shadowfs.errors import RequestError as RequestError

MAX_FRAME = 1 << 20
MAX_FDS = 253  # SCM_MAX_FD on Linux
_HEADER = struct.Struct(">I")
ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

# A frame as received: one decoded JSON object, checked by whoever reads it.
Frame = dict[str, Any]
# What a sender hands over: any JSON object, typically one of `shadowfs.ipc.messages`.
Message = Mapping[str, Any]


# --- encoding ---------------------------------------------------------------------------------


def encode_frame(obj: Message) -> bytes:
    """Header + JSON body for `obj`; refuses non-objects and frames over MAX_FRAME."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a frame must hold a JSON object, not {type(obj).__name__}")
    try:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"frame cannot be encoded as JSON: {exc}") from exc
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Frame:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"frame is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame holds a JSON {type(obj).__name__}, not an object")
    return obj


def fds_ancillary(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if len(fds) > MAX_FDS:
        raise ProtocolError(f"{len(fds)} descriptors in one frame; at most {MAX_FDS}")
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FrameAssembler:
    """Sans-I/O state of one frame being received: how much to read next, what arrived.

    Call `wanted()` for the number of bytes to `recvmsg`, then `feed()` with the
    result, until `wanted()` is 0; then `finish()` gives `(obj, fds)`.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._body = bytearray()
        self._length: int | None = None
        self.fds: list[int] = []

    @property
    def started(self) -> bool:
        return bool(self._header) or bool(self.fds)

    def wanted(self) -> int:
        if self._length is None:
            return _HEADER.size - len(self._header)
        return self._length - len(self._body)

    def feed(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> None:
        """Take one recvmsg result. Raises ChannelClosed / ProtocolError (closing received fds)."""
        self._take_fds(ancdata)
        if flags & socket.MSG_CTRUNC:
            self.abandon()
            raise ProtocolError("descriptors were truncated in transit (too many in one frame)")
        if not data:
            started = self.started
            self.abandon()
            if started:
                raise ProtocolError("connection closed in the middle of a frame")
            raise ChannelClosed("peer closed the connection")
        if self._length is None:
            self._header += data
            if len(self._header) == _HEADER.size:
                (length,) = _HEADER.unpack(self._header)
                if length > MAX_FRAME:
                    self.abandon()
                    raise ProtocolError(f"incoming frame of {length} bytes exceeds "
                                        f"the {MAX_FRAME}-byte limit")
                self._length = length
        else:
            self._body += data

    def finish(self) -> tuple[Frame, list[int]]:
        assert self.wanted() == 0 and self._length is not None
        try:
            obj = decode_body(bytes(self._body))
        except ProtocolError:
            self.abandon()
            raise
        fds, self.fds = self.fds, []
        return obj, fds

    def abandon(self) -> None:
        close_fds(self.fds)
        self.fds = []

    def _take_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)


# --- blocking API (CLI) -----------------------------------------------------------------------


def send_frame(sock: socket.socket, obj: Message, fds: Sequence[int] = ()) -> None:
    """Send one frame (blocking); the descriptors stay owned by the caller."""
    data = encode_frame(obj)
    sent = sock.sendmsg([data], fds_ancillary(fds))
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_frame(sock: socket.socket) -> tuple[Frame, list[int]]:
    """Receive one frame (blocking). Raises ChannelClosed at a clean EOF, ProtocolError if malformed."""
    frame = FrameAssembler()
    while (wanted := frame.wanted()) > 0:
        try:
            data, ancdata, flags, _ = sock.recvmsg(wanted, ANC_SIZE)
        except BaseException:
            frame.abandon()
            raise
        frame.feed(data, ancdata, flags)
    return frame.finish()


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED; a standard
    or a trio socket)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def error_reply(request_id: Any, message: str, kind: str) -> Frame:
    """The reply refusing request `request_id` (None: the connection as a whole): the message as one
    line, and the kind of error (`shadowfs.errors`) the client raises again from it."""
    return {"id": request_id, "ok": False, "error": " ".join(str(message).split()) or "error", "kind": kind}
