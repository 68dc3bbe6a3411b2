"""`Service`: the daemon's entry to the VSS service (see the package docstring for the picture).

One job: connect and disconnect each client of the daemon socket, and hand
each service request to the registry or the broker.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TypedDict

import trio

import shadowfs
from shadowfs import statedir
from shadowfs.errors import ConfigError, DaemonStarting
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.frames import Frame, Message
from shadowfs.ipc.vss_messages import (
    HelloReply,
    PropertiesReply,
    SessionEndReply,
    SnapshotPropertiesEntry,
    WriterRegisterReply,
    WritersReply,
)
from shadowfs.service import protocol
from shadowfs.service.broker import Broker, Handler, Session, SnapshotRow, VolumeOps
from shadowfs.service.connection import BoundedChannel, Connection
from shadowfs.service.protocol import Event
from shadowfs.service.registry import Registry
from shadowfs.service.setstore import SetStore

__all__ = ["BoundedChannel", "Connection", "Service", "VolumeOps"]

log = logging.getLogger(__name__)

LEFTOVER_WAIT = 120.0

Op = Callable[[Connection, Frame], Awaitable[Message]]


class SnapshotExtra(TypedDict):
    """What the service knows of a snapshot's set beyond the diff area (`snapshot_list` entries)."""

    context: str
    attributes: int
    label: str | None


class Service:
    """The service side of one daemon: `connect`/`disconnect` each client, `handle` its service ops."""

    def __init__(self, volumes: VolumeOps, state_dir: str, mount_root: str,
                 max_snapshots: int = protocol.DEFAULT_MAX_SNAPSHOTS_PER_VOLUME) -> None:
        self.volumes = volumes
        self.mount_root = mount_root
        self.registry = Registry()
        self.sets = SetStore(state_dir)
        self.broker = Broker(volumes, self.registry, self.sets, max_snapshots)
        self.connections: set[Connection] = set()
        self.ops: dict[str, Op] = {
            "hello": self.op_hello, "writer_register": self.op_writer_register, "writers": self.op_writers,
            "gather_writer_metadata": self._requester(self.broker.gather_writer_metadata),
            "prepare_for_backup": self._event(Event.PREPARE_BACKUP, claim=True, release=False),
            "snapshot_create": self._requester(self.broker.snapshot_create),
            "backup_complete": self._event(Event.BACKUP_COMPLETE, claim=False, release=True),
            "abort_backup": self._event(Event.ABORT, claim=False, release=True),
            "backup_shutdown": self._requester(self._shutdown),
            "pre_restore": self._event(Event.PRE_RESTORE, claim=True, release=False),
            "post_restore": self._event(Event.POST_RESTORE, claim=False, release=True),
            "gather_writer_status": self._requester(self.gather_writer_status),
            "snapshot_properties": self.op_snapshot_properties,
        }

    # ---- life ----------------------------------------------------------------------------------

    def load(self) -> None:
        """Blocking start-up work: read `sets.json`."""
        self.sets.load()

    def start(self, nursery: trio.Nursery) -> None:
        """Give the service a nursery for background work and start the leftover cleanup."""
        self.broker.background = nursery
        nursery.start_soon(self._cleanup_leftovers)

    def connect(self, channel: Channel, pid: int, uid: int) -> Connection | None:
        """A new client; None when the daemon already serves `MAX_CONNECTIONS` (the caller closes it)."""
        if len(self.connections) >= protocol.MAX_CONNECTIONS:
            log.warning("refusing a connection from pid %d: %d connections already", pid,
                        len(self.connections))
            return None
        conn = Connection(channel, pid, uid)
        self.connections.add(conn)
        return conn

    async def disconnect(self, conn: Connection) -> None:
        """The client is gone: unregister its writer, or end its session (shielded by the caller)."""
        self.connections.discard(conn)
        if conn.writer is not None:
            self.registry.unregister(conn.writer)
        if conn.has_session:
            await self.broker.end_session(conn.session, closing=True)

    def handles(self, op: object) -> bool:
        return isinstance(op, str) and op in self.ops

    async def handle(self, conn: Connection, request: Frame) -> Message:
        protocol.check_protocol(request)
        return await self.ops[request["op"]](conn, request)

    # ---- ops -------------------------------------------------------------------------------------

    async def op_hello(self, conn: Connection, request: Frame) -> HelloReply:
        protocol.check_protocol(request, required=True)
        return {"protocol": protocol.PROTOCOL, "version": shadowfs.__version__,
                "limits": {"max_frame": frames.MAX_FRAME, "max_in_flight": protocol.MAX_IN_FLIGHT,
                           "max_volumes_per_set": protocol.MAX_VOLUMES_PER_SET,
                           "max_snapshots_per_volume": self.broker.max_snapshots,
                           "default_freeze_timeout": protocol.DEFAULT_FREEZE_TIMEOUT}}

    async def op_writer_register(self, conn: Connection, request: Frame) -> WriterRegisterReply:
        protocol.check_protocol(request, required=True)
        if conn.writer is not None:
            raise frames.RequestError("this connection has registered a writer already")
        if conn.has_session:
            raise frames.RequestError("this connection is a requester's; a writer needs a connection "
                                      "of its own")
        conn.writer = self.registry.register(request, conn.channel, conn.pid)
        return {"protocol": protocol.PROTOCOL, "writer": conn.writer.describe()}

    async def op_writers(self, _conn: Connection, request: Frame) -> WritersReply:
        return {"writers": self.registry.describe(departed=protocol.flag(request, "departed", False))}

    def _requester(self, method: Handler) -> Op:
        async def op(conn: Connection, request: Frame) -> Message:
            if conn.writer is not None:
                raise frames.RequestError("this connection belongs to a writer; requester calls need "
                                          "their own")
            return await method(conn.session, request)
        return op

    def _event(self, event: Event, *, claim: bool, release: bool) -> Op:
        async def method(session: Session, request: Frame) -> Message:
            return await self.broker.sequence_event(session, request, event, claim=claim, release=release)
        return self._requester(method)

    async def _shutdown(self, session: Session, _request: Frame) -> SessionEndReply:
        return await self.broker.end_session(session, closing=False)

    async def gather_writer_status(self, session: Session, _request: Frame) -> WritersReply:
        """Every writer this session dealt with (also departed ones), then every other registered writer."""
        records = dict(session.known)
        for instance_id, record in self.registry.writers.items():
            records.setdefault(instance_id, record)
        return {"writers": [r.describe() for r in records.values()]}

    async def op_snapshot_properties(self, _conn: Connection, request: Frame) -> PropertiesReply:
        """VSS_SNAPSHOT_PROP of one snapshot, or of every snapshot of one set."""
        wanted = protocol.guid(request, "snapshot")
        everything = await self.volumes.snapshots()
        matches = [(v, r) for v, r in everything if wanted in (r["snapshot_id"], r["set_id"])]
        if not matches:
            raise frames.RequestError(f"unknown snapshot or snapshot set {wanted}")
        return {"snapshots": [self.properties(v, r, everything) for v, r in matches]}

    def properties(self, volume: str, record: SnapshotRow,
                   everything: list[tuple[str, SnapshotRow]]) -> SnapshotPropertiesEntry:
        backing, mount = self.volumes.volume_paths(volume)
        context, attributes = self.sets.context_of(record["set_id"])
        host = socket.gethostname()
        exposed = self.volumes.exposed_paths(record["snapshot_id"])
        return {"snapshot_id": record["snapshot_id"], "snapshot_set_id": record["set_id"],
                "snapshots_count": sum(1 for _, r in everything if r["set_id"] == record["set_id"]),
                "snapshot_device_object": statedir.snapshot_path(self.mount_root, record["set_id"], volume),
                "original_volume_name": volume, "original_volume_path": mount, "backing_path": backing,
                "originating_machine": host, "service_machine": host, "exposed_name": None,
                "exposed_path": exposed[0] if exposed else None, "provider_id": protocol.PROVIDER_ID,
                "snapshot_attributes": attributes,
                "context": context.value, "creation_timestamp": record["created"], "status": "created",
                "seq": record["seq"]}

    def snapshot_extra(self, set_id: str) -> SnapshotExtra:
        """Fields the daemon adds to each `snapshot_list` entry."""
        context, attributes = self.sets.context_of(set_id)
        return {"context": context.value, "attributes": attributes, "label": self.sets.label_of(set_id)}

    async def prune(self) -> None:
        """Forget `sets.json` entries of finished sets that have no snapshot left (hold `mutation`)."""
        existing = {r["set_id"] for _, r in await self.volumes.snapshots()}
        gone = [s for s, e in self.sets.sets.items() if e.get("state") == "done" and s not in existing]
        if gone:
            await trio.to_thread.run_sync(self.sets.forget, gone)

    # ---- start-up cleanup ----------------------------------------------------------------------

    async def _cleanup_leftovers(self) -> None:
        leftovers = self.sets.leftovers()
        if leftovers:
            log.info("deleting %d snapshot set(s) a previous daemon left auto-release or half made",
                     len(leftovers))
            names = sorted({n for s in leftovers for n in self.sets.sets[s].get("volumes", [])
                            if isinstance(n, str)})
            with trio.move_on_after(LEFTOVER_WAIT):
                while True:
                    try:
                        self.volumes.check_ready([n for n in names if self._exists(n)])
                        break
                    except (frames.RequestError, DaemonStarting):
                        await trio.sleep(0.2)
            await self.broker.release_sets(leftovers)
        async with self.volumes.mutation:
            await self.prune()

    def _exists(self, name: str) -> bool:
        try:
            self.volumes.volume_paths(name)
        except (frames.RequestError, ConfigError):
            return False
        return True
