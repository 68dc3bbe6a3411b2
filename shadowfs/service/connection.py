"""One client connection of the daemon socket, with the limits that keep a bad peer from hurting it.

One job: bound what a single connection can cost the daemon, and remember what
the connection is (a writer's registration, a requester's session).

Invariants:
- At most `MAX_IN_FLIGHT` requests of one peer are handled at once; more get
  an error reply. A peer that keeps more than `4 * MAX_IN_FLIGHT` requests
  open (it floods, or does not read its replies) is disconnected, so the tasks
  and buffers a connection holds stay bounded.
- A frame whose "id" is not an integer or a short string gets an error reply
  (id null) and is otherwise ignored.
- Frames are capped by `frames.MAX_FRAME`; the daemon accepts at most
  `MAX_CONNECTIONS` connections at once (`Service.connect`).
"""

from __future__ import annotations

import logging

import trio

from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel, EventHandler, RequestHandler
from shadowfs.service import protocol
from shadowfs.service.broker import Session
from shadowfs.service.registry import WriterRecord

log = logging.getLogger(__name__)


class BoundedChannel(Channel):
    """An `Channel` that limits how many of its peer's requests are in progress (handler + reply)."""

    def __init__(self, sock: trio.socket.SocketType, limit: int = protocol.MAX_IN_FLIGHT) -> None:
        super().__init__(sock)
        self.limit = limit
        self.in_progress = 0

    async def _dispatch(self, nursery: trio.Nursery, obj: frames.Frame, fds: list[int],
                        on_event: EventHandler | None, on_request: RequestHandler | None) -> None:
        request_id = obj.get("id")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int | str)
                                       or isinstance(request_id, str) and len(request_id) > 64):
            frames.close_fds(fds)
            await self._reply(frames.error_reply(None, "field 'id' must be an integer or a short string",
                                                 frames.ProtocolError.kind))
            return
        await super()._dispatch(nursery, obj, fds, on_event, on_request)

    async def _serve_one(self, handler: RequestHandler, request: frames.Frame, fds: list[int]) -> None:
        self.in_progress += 1
        try:
            if self.in_progress > 4 * self.limit:
                frames.close_fds(fds)
                if not self.closed:
                    log.warning("a client keeps more than %d requests open; disconnecting it", 4 * self.limit)
                    self.close()
                return
            if self.in_progress > self.limit:
                frames.close_fds(fds)
                await self._reply(frames.error_reply(request.get("id"),
                                                     f"too many requests in flight on this "
                                                     f"connection (limit {self.limit})",
                                                     frames.RequestError.kind))
                return
            await super()._serve_one(handler, request, fds)
        finally:
            self.in_progress -= 1


class Connection:
    """What one connection is: its peer, and once known, its writer record or requester session."""

    def __init__(self, channel: Channel, pid: int, uid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.uid = uid
        self.writer: WriterRecord | None = None
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(self.pid)
        return self._session

    @property
    def has_session(self) -> bool:
        return self._session is not None
