"""Frames between shadowfs processes over trio: the `Channel`.

One job: a trio frame channel over one connected Unix stream socket, with
requests, replies and events dispatched (`Channel.run`). The wire format and
the blocking API live in `shadowfs.ipc.frames` (no trio) and are re-exported here.

Request/reply convention (ARCHITECTURE.md): a request carries an integer-or-string
`"id"`; its reply carries the same id and `"ok": true` plus fields, or
`"ok": false, "error": "<one line>", "kind": "<error kind>"`. A frame without an
id is an event.

Invariants:
- A handler that raises a `ShadowfsError` gets an error reply with the error's
  message and kind, no traceback; anything else is logged with its traceback
  and answered with kind "internal".
- `call` raises `RemoteError` (its `.kind` set from the reply) for every error
  reply, whatever the kind: the peers of a channel (mount processes, the
  browser, writers) are answered alike, and a peer cannot make the caller
  raise some other class. Clients of the daemon that want the class back use
  `errors.from_wire` (`shadowfs.ipc.client` does).
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from shadowfs.errors import ShadowfsError
from shadowfs.ipc.frames import (
    ANC_SIZE,
    MAX_FDS,
    MAX_FRAME,
    CallTimeout,
    ChannelClosed,
    Frame,
    FrameAssembler,
    Message,
    ProtocolError,
    RemoteError,
    RequestError,
    close_fds,
    decode_body,
    encode_frame,
    error_reply,
    fds_ancillary,
    peer_credentials,
    recv_frame,
    send_frame,
)

log = logging.getLogger(__name__)

EventHandler = Callable[[Frame, list[int]], Awaitable[None]]
# a handler's reply: its fields (the channel adds "id" and "ok"), and descriptors to send along
RequestHandler = Callable[[Frame, list[int]], Awaitable["Message | tuple[Message, Sequence[int]]"]]


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
        self._ended = False  # `run` has returned: the peer is gone for good
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

    async def send(self, obj: Message, fds: Sequence[int] = ()) -> None:
        data = encode_frame(obj)
        anc = fds_ancillary(fds)
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
                    data, ancdata, flags, _ = await self.sock.recvmsg(wanted, ANC_SIZE)
                except BaseException:
                    frame.abandon()
                    raise
                frame.feed(data, ancdata, flags)
            return frame.finish()
        finally:
            self._receiving = False

    async def call(self, request: Message, fds: Sequence[int] = (), timeout: float = 10.0) -> Frame:
        """Send a request, wait for its reply; raises RemoteError, CallTimeout, ChannelClosed.

        Needs `run` running. Descriptors in the reply are closed; use `call_fds` to keep them.
        """
        reply, reply_fds = await self.call_fds(request, fds, timeout)
        close_fds(reply_fds)
        return reply

    async def call_fds(self, request: Message, fds: Sequence[int] = (),
                       timeout: float = 10.0) -> tuple[Frame, list[int]]:
        if not self._running:
            if self._ended:  # a call racing the peer's exit: as for a call pending when it left
                raise ChannelClosed("peer closed the connection")
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
            kind = pending.reply.get("kind")
            raise RemoteError(str(pending.reply.get("error", "request failed")),
                              kind if isinstance(kind, str) else None)
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
            self._ended = True
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
                await self._reply(error_reply(request_id, f"unexpected request {obj.get('op')!r}",
                                              RequestError.kind))
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
        fields: Message
        try:
            result = await handler(request, fds)
            if isinstance(result, tuple):
                fields, reply_fds = result
            else:
                fields = result
            reply = {**fields, "id": request_id, "ok": True}
        except ShadowfsError as exc:
            reply = error_reply(request_id, str(exc), exc.kind)
        except Exception as exc:
            log.exception("request %r failed", request.get("op"))
            reply = error_reply(request_id, f"{type(exc).__name__}: {exc}", "internal")
        await self._reply(reply, reply_fds)

    async def _reply(self, reply: Frame, fds: Sequence[int] = ()) -> None:
        try:
            await self.send(reply, fds)
        except ProtocolError as exc:
            await self.send(error_reply(reply.get("id"), f"reply could not be sent: {exc}", exc.kind))
        except (ChannelClosed, BrokenPipeError, ConnectionResetError, trio.ClosedResourceError):
            log.debug("peer went away before reply %r", reply.get("id"))

    def _fail_pending(self, error: BaseException) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()


__all__ = [
    "ANC_SIZE",
    "CallTimeout",
    "Channel",
    "ChannelClosed",
    "EventHandler",
    "Frame",
    "FrameAssembler",
    "MAX_FDS",
    "Message",
    "MAX_FRAME",
    "ProtocolError",
    "RemoteError",
    "RequestError",
    "RequestHandler",
    "close_fds",
    "decode_body",
    "encode_frame",
    "error_reply",
    "fds_ancillary",
    "peer_credentials",
    "recv_frame",
    "send_frame",
]
