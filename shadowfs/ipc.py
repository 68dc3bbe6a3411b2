"""Frames between shadowfs processes: length-prefixed JSON with optional descriptors.

One job: move one JSON object (and, optionally, file descriptors) from one
process to another over a Unix stream socket, in both a trio API (`Channel`)
and a blocking API for the CLI (`send_frame`, `recv_frame`).

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
`"ok": false, "error": "<one line>"`. A frame without an id is an event.
"""

from __future__ import annotations

import array
import itertools
import json
import logging
import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20
MAX_FDS = 253  # SCM_MAX_FD on Linux
_HEADER = struct.Struct(">I")
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

Frame = dict[str, Any]
EventHandler = Callable[[Frame, list[int]], Awaitable[None]]
RequestHandler = Callable[[Frame, list[int]], Awaitable["Frame | tuple[Frame, Sequence[int]]"]]


class ProtocolError(ValueError):
    """The peer sent something that is not a valid frame."""


class ChannelClosed(ConnectionError):
    """The peer closed the connection (at a frame boundary, or while a call waited)."""


class RemoteError(RuntimeError):
    """The peer answered a request with `"ok": false`; the message is its error."""


class CallTimeout(TimeoutError):
    """No reply arrived in time."""


class RequestError(Exception):
    """Raised by a request handler for an expected failure: becomes the error reply, no traceback."""


# --- encoding ---------------------------------------------------------------------------------


def encode_frame(obj: Frame) -> bytes:
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


def _fds_ancillary(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
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


def send_frame(sock: socket.socket, obj: Frame, fds: Sequence[int] = ()) -> None:
    """Send one frame (blocking); the descriptors stay owned by the caller."""
    data = encode_frame(obj)
    sent = sock.sendmsg([data], _fds_ancillary(fds))
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_frame(sock: socket.socket) -> tuple[Frame, list[int]]:
    """Receive one frame (blocking). Raises ChannelClosed at a clean EOF, ProtocolError if malformed."""
    frame = FrameAssembler()
    while (wanted := frame.wanted()) > 0:
        try:
            data, ancdata, flags, _ = sock.recvmsg(wanted, _ANC_SIZE)
        except BaseException:
            frame.abandon()
            raise
        frame.feed(data, ancdata, flags)
    return frame.finish()


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def error_reply(request_id: Any, message: str) -> Frame:
    return {"id": request_id, "ok": False, "error": " ".join(str(message).split()) or "error"}


# --- trio API -----------------------------------------------------------------------------------


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Frame | None = None
        self.fds: list[int] = []
        self.error: BaseException | None = None


class Channel:
    """A trio frame channel over one connected Unix stream socket.

    Use `send`/`receive` directly, or start `run` in a nursery to dispatch:
    replies go to the `call` that waits for them, events (no id) to
    `on_event` (or the `events` queue), and requests (with "op") to
    `on_request`, each in its own task. Only one task may receive at a time.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._send_lock = trio.Lock()
        self._receiving = False
        self._ids = itertools.count(1)
        self._pending: dict[Any, _Pending] = {}
        self._running = False
        self._closed = False
        self._events_send, self.events = trio.open_memory_channel[tuple[Frame, list[int]]](math.inf)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> Channel:
        sock.setblocking(False)
        return cls(trio.socket.from_stdlib_socket(sock))

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        """Wrap an inherited socket descriptor (e.g. `--control-fd N`); takes ownership of it."""
        return cls.from_socket(socket.socket(fileno=fd))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()
            self._fail_pending(ChannelClosed("channel closed"))

    async def send(self, obj: Frame, fds: Sequence[int] = ()) -> None:
        data = encode_frame(obj)
        anc = _fds_ancillary(fds)
        async with self._send_lock:
            if self._closed:
                raise ChannelClosed("channel closed")
            sent = await self.sock.sendmsg([data], anc)
            while sent < len(data):
                sent += await self.sock.send(data[sent:])

    async def receive(self) -> tuple[Frame, list[int]]:
        """The next frame and its descriptors (owned by the caller)."""
        if self._receiving:
            raise RuntimeError("another task is already receiving on this channel")
        self._receiving = True
        frame = FrameAssembler()
        try:
            while (wanted := frame.wanted()) > 0:
                try:
                    data, ancdata, flags, _ = await self.sock.recvmsg(wanted, _ANC_SIZE)
                except BaseException:
                    frame.abandon()
                    raise
                frame.feed(data, ancdata, flags)
            return frame.finish()
        finally:
            self._receiving = False

    async def call(self, request: Frame, fds: Sequence[int] = (), timeout: float = 10.0) -> Frame:
        """Send a request, wait for its reply; raises RemoteError, CallTimeout, ChannelClosed.

        Needs `run` running. Descriptors in the reply are closed; use `call_fds` to keep them.
        """
        reply, reply_fds = await self.call_fds(request, fds, timeout)
        close_fds(reply_fds)
        return reply

    async def call_fds(self, request: Frame, fds: Sequence[int] = (),
                       timeout: float = 10.0) -> tuple[Frame, list[int]]:
        if not self._running:
            raise RuntimeError("Channel.call needs Channel.run running in a nursery")
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            await self.send({**request, "id": request_id}, fds)
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if not pending.done.is_set():
            raise CallTimeout(f"no reply to {request.get('op')!r} within {timeout:g} s")
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        if not pending.reply.get("ok", False):
            close_fds(pending.fds)
            raise RemoteError(str(pending.reply.get("error", "request failed")))
        return pending.reply, pending.fds

    async def run(self, on_event: EventHandler | None = None, on_request: RequestHandler | None = None,
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch frames until the peer closes; then pending calls fail with ChannelClosed.

        A ProtocolError from the peer ends the loop (the stream can no longer be trusted) and is
        raised; callers that serve untrusted peers catch it.
        """
        self._running = True
        task_status.started()
        failure: ProtocolError | None = None
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        obj, fds = await self.receive()
                    except (ChannelClosed, ConnectionResetError, trio.ClosedResourceError):
                        break
                    except ProtocolError as exc:
                        failure = exc
                        break
                    await self._dispatch(nursery, obj, fds, on_event, on_request)
        finally:
            self._running = False
            self._fail_pending(ChannelClosed("peer closed the connection"))
            self._events_send.close()
        if failure is not None:
            raise failure

    async def _dispatch(self, nursery: trio.Nursery, obj: Frame, fds: list[int],
                        on_event: EventHandler | None, on_request: RequestHandler | None) -> None:
        request_id = obj.get("id")
        if request_id is None:
            if on_event is not None:
                await on_event(obj, fds)
            else:
                self._events_send.send_nowait((obj, fds))
        elif "op" in obj:
            if on_request is None:
                close_fds(fds)
                await self._reply(error_reply(request_id, f"unexpected request {obj.get('op')!r}"))
            else:
                nursery.start_soon(self._serve_one, on_request, obj, fds)
        elif (pending := self._pending.get(request_id)) is not None and not pending.done.is_set():
            pending.reply, pending.fds = obj, fds
            pending.done.set()
        else:
            close_fds(fds)
            log.warning("dropping reply to unknown or timed-out request id %r", request_id)

    async def _serve_one(self, handler: RequestHandler, request: Frame, fds: list[int]) -> None:
        request_id = request["id"]
        reply_fds: Sequence[int] = ()
        try:
            result = await handler(request, fds)
            if isinstance(result, tuple):
                reply, reply_fds = result
            else:
                reply = result
            reply = {**reply, "id": request_id, "ok": True}
        except RequestError as exc:
            reply = error_reply(request_id, str(exc))
        except Exception as exc:
            log.exception("request %r failed", request.get("op"))
            reply = error_reply(request_id, f"{type(exc).__name__}: {exc}")
        await self._reply(reply, reply_fds)

    async def _reply(self, reply: Frame, fds: Sequence[int] = ()) -> None:
        try:
            await self.send(reply, fds)
        except ProtocolError as exc:
            await self.send(error_reply(reply.get("id"), f"reply could not be sent: {exc}"))
        except (ChannelClosed, BrokenPipeError, ConnectionResetError, trio.ClosedResourceError):
            log.debug("peer went away before reply %r", reply.get("id"))

    def _fail_pending(self, error: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()
