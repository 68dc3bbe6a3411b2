"""The event sequences the daemon runs between one requester session and the writers.

One job: carry out a requester's call (gather metadata, prepare for backup,
create a snapshot set with writers, backup complete, abort, restore events) as
the VSS service does: which writers get which event, in which order, with which
timeout, and what happens on every kind of failure.

Snapshot-set creation (`Broker.snapshot_create`), design §4.1 and vss §2:

    PrepareForSnapshot (all involved writers, concurrently)
    Freeze (all, concurrently, bounded by the freeze timeout)
    hold / commit / release on every volume (`VolumeOps.take_set`, writes held <= 10 s;
                             the reply's `held_ms` says how long each volume held them)
    Thaw (all, concurrently)
    PostSnapshot (all, concurrently)

Invariants:
- Every path out of `snapshot_create` (success, veto, timeout, a writer or the
  requester dying, daemon shutdown) ends with every writer that got
  PrepareForSnapshot either thawed (Thaw succeeded) or sent Abort, and with no
  snapshot of a failed set left: snapshots already committed are deleted.
  A failure at PostSnapshot leaves a whole, consistent set; the writer shows
  `failed_at_post_snapshot`. A set that was not made is refused with
  `SetAborted` (error kind "set_aborted"), which requesters tell apart by its
  kind, never by its message.
- Writers that did not answer (timeout, gone) get their Abort in the
  background, so the requester hears of the abort within the freeze timeout.
- A writer takes part in one sequence at a time: a session claims it at
  PrepareForBackup, snapshot creation or PreRestore and releases it at
  BackupComplete, Abort, PostRestore, BackupShutdown or when the session ends.
- One snapshot set is created at a time (`VolumeOps.mutation`), for at most
  `MAX_VOLUMES_PER_SET` volumes, none of which may already hold the maximum
  number of snapshots.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import trio

from shadowfs import statedir
from shadowfs.documents.enums import BackupType, SnapshotContext, WriterFailure
from shadowfs.errors import SetAborted
from shadowfs.ipc import frames
from shadowfs.ipc.frames import Frame, Message
from shadowfs.ipc.vss_messages import (
    EventPayload,
    MetadataReply,
    SessionEndReply,
    SnapshotCreateReply,
    WriterResultsReply,
)
from shadowfs.service import protocol
from shadowfs.service.protocol import Event
from shadowfs.service.registry import Outcome, Registry, WriterRecord
from shadowfs.service.setstore import SetStore

log = logging.getLogger(__name__)


class SnapshotRow(TypedDict):
    """One snapshot as the daemon reads it from its volume's diff area (`VolumeOps.snapshots`)."""

    seq: int
    snapshot_id: str
    set_id: str
    created: str
    bytes: int  # what the diff area holds for this snapshot alone
    damaged: int  # objects marked damaged in it (design §9.3)
    held: str | None  # held since (UTC), else None
    previous_version: str  # its name in the browser's by-volume/<volume>/ (@GMT-...; design §5.6)


@dataclass
class TakenSet:
    """What `VolumeOps.take_set` made: each volume's snapshot sequence, and for how long each
    volume's changes were held (milliseconds, as its mount process measured its closed gate)."""

    seqs: dict[str, int] = field(default_factory=dict)
    held_ms: dict[str, float] = field(default_factory=dict)

    def note_commit(self, volume: str, reply: Frame) -> None:
        """Read a commit reply (`messages.CommitReply`, checked): the sequence, and `held_ms` if the
        commit also released."""
        seq = reply["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"seq must be an integer, not {seq!r}")
        self.seqs[volume] = seq
        self.note_release(volume, reply)

    def note_release(self, volume: str, reply: Frame) -> None:
        """Read a release reply (`messages.ReleaseReply`, checked); one without `held_ms` (its hold
        had already ended) adds nothing."""
        held = reply.get("held_ms")
        if held is not None:
            if isinstance(held, bool) or not isinstance(held, int | float) or held < 0:
                raise ValueError(f"held_ms must be a non-negative number, not {held!r}")
            self.held_ms[volume] = float(held)


class VolumeOps(Protocol):
    """What the broker needs from the daemon's volumes (implemented by `daemon.Daemon`)."""

    mutation: trio.Lock

    mount_root: str

    def volume_paths(self, name: str) -> tuple[str, str]:
        """(backing, mount) of volume `name`; RequestError or ConfigError if unknown."""

    def check_ready(self, names: list[str]) -> None:
        """RequestError unless every named volume's mount process is ready."""

    async def take_set(self, names: list[str], set_id: str, ids: dict[str, str],
                       created: str) -> TakenSet:
        """Hold all, then commit and release each; on failure nothing stays and SetAborted is
        raised."""

    async def delete_set(self, set_id: str) -> int:
        """Delete every snapshot of the set; return how many."""

    async def snapshots(self) -> list[tuple[str, SnapshotRow]]:
        """(volume, snapshot record) for every snapshot."""

    async def snapshot_ids(self) -> list[tuple[str, str, str]]:
        """(volume, set id, snapshot id) for every snapshot (cheaper than `snapshots`)."""

    async def refresh_browser(self) -> None:
        """Return once the snapshot browser shows the sets as they are now."""

    def exposed_paths(self, snapshot_id: str) -> list[str]:
        """Where `snapshot expose` shows the snapshot now."""


class Session:
    """One requester connection's view of the writers: whom it involved and what it must clean up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.session_id = str(uuid.uuid4())
        self.known: dict[str, WriterRecord] = {}      # writers this session talked to, for their status
        self.claimed: dict[str, WriterRecord] = {}    # writers in a sequence of this session now
        self.sequenced: dict[str, WriterRecord] = {}  # writers that got a sequence event: BackupShutdown
        self.auto_release: list[str] = []             # sets deleted when the session ends
        self.closed = False

    def note(self, records: Iterable[WriterRecord]) -> None:
        for record in records:
            self.known[record.identity.instance_id] = record

    def claim(self, records: list[WriterRecord]) -> None:
        for record in records:
            owner = record.owner
            if owner is not None and owner is not self and not getattr(owner, "closed", True):
                raise frames.RequestError(f"writer {record.identity.writer_name!r} (instance "
                                       f"{record.identity.instance_id}) is busy in another backup session "
                                       f"(pid {getattr(owner, 'pid', '?')})")
        for record in records:
            record.owner = self
            self.claimed[record.identity.instance_id] = record
            self.sequenced[record.identity.instance_id] = record
        self.note(records)

    def release(self, records: Iterable[WriterRecord] | None = None) -> None:
        for record in list(self.claimed.values()) if records is None else list(records):
            if record.owner is self:
                record.owner = None
            self.claimed.pop(record.identity.instance_id, None)


class Broker:
    """The sequences; shared by every connection of one daemon."""

    def __init__(self, volumes: VolumeOps, registry: Registry, sets: SetStore, max_snapshots: int) -> None:
        self.volumes = volumes
        self.registry = registry
        self.sets = sets
        self.max_snapshots = max_snapshots
        self.background: trio.Nursery | None = None

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    def payload(session: Session, request: Frame, volumes: list[str] | None = None) -> EventPayload:
        """The fields every writer event carries, taken (checked) from the requester's request."""
        return {"session": protocol.text(request, "session", default=session.session_id, limit=64),
                "context": protocol.enum_field(request, "context", SnapshotContext,
                                               SnapshotContext.BACKUP).value,
                "backup_type": protocol.enum_field(request, "backup_type", BackupType, BackupType.FULL).value,
                "partial_file_support": protocol.flag(request, "partial_file_support", False),
                "volumes": volumes or [], "bcd": protocol.document(request, "bcd")}

    @staticmethod
    async def broadcast(records: list[WriterRecord], event: Event, payload: EventPayload,
                        timeout: float) -> list[Outcome]:
        """Deliver one event to every writer at once; outcomes in the order of `records`."""
        outcomes: list[Outcome | None] = [None] * len(records)

        async def one(i: int, record: WriterRecord) -> None:
            outcomes[i] = await record.deliver(event, payload, timeout)

        async with trio.open_nursery() as nursery:
            for i, record in enumerate(records):
                nursery.start_soon(one, i, record)
        return [o for o in outcomes if o is not None]

    def _writers_of(self, request: Frame, session: Session) -> list[WriterRecord]:
        """The writers a call names (`writers`: instance ids), else those the session claimed."""
        ids = protocol.string_list(request, "writers", limit=protocol.MAX_WRITERS, optional=True,
                                   item_limit=64)
        if ids is None:
            return list(session.claimed.values())
        wanted = [protocol.guid({"id": i}, "id") or "" for i in ids]
        # a writer of this session that has gone stays addressable: its event then fails as "disconnected"
        departed = [i for i in wanted if i not in self.registry.writers and i in session.known]
        present = self.registry.select([i for i in wanted if i not in departed])
        by_id = {r.identity.instance_id: r for r in present}
        return [by_id.get(i) or session.known[i] for i in dict.fromkeys(wanted)]

    # ---- discovery and backup events ------------------------------------------------------------

    async def gather_writer_metadata(self, session: Session, request: Frame) -> MetadataReply:
        timeout = protocol.seconds(request, "timeout", protocol.EVENT_TIMEOUT)
        assert timeout is not None
        records = list(self.registry.writers.values())
        session.note(records)
        outcomes = await self.broadcast(records, Event.IDENTIFY, self.payload(session, request), timeout)
        return {"writers": [{**o.to_json(), "metadata": o.metadata} for o in outcomes]}

    async def sequence_event(self, session: Session, request: Frame, event: Event, *,
                             claim: bool, release: bool) -> WriterResultsReply:
        """PrepareForBackup, BackupComplete, Abort, BackupShutdown, PreRestore, PostRestore."""
        timeout = protocol.seconds(request, "timeout", protocol.EVENT_TIMEOUT)
        assert timeout is not None
        records = self._writers_of(request, session)
        if claim:
            session.claim(records)
            for record in records:
                record.begin_sequence()
        session.note(records)
        try:
            outcomes = await self.broadcast(records, event, self.payload(session, request), timeout)
        finally:
            if release:
                session.release(records)
        return {"writers": [o.to_json() for o in outcomes]}

    # ---- snapshot sets ------------------------------------------------------------------------------

    async def snapshot_create(self, session: Session, request: Frame) -> SnapshotCreateReply:
        names = self._volume_names(request)
        context = protocol.enum_field(request, "context", SnapshotContext,
                                      SnapshotContext.CLIENT_ACCESSIBLE_WRITERS)
        wanted = request.get("writers", context.involves_writers)
        if not isinstance(wanted, bool | list):
            raise frames.RequestError("request field 'writers' must be true, false or a list of "
                                   "writer instance ids")
        if wanted not in (False, []) and not context.involves_writers:
            raise frames.RequestError(f"context {context.value} does not involve writers")
        event_timeout = protocol.seconds(request, "event_timeout", protocol.EVENT_TIMEOUT)
        freeze_timeout = protocol.seconds(request, "freeze_timeout", None)
        set_id = protocol.guid(request, "set_id", optional=True) or str(uuid.uuid4())
        label = protocol.label(request)
        assert event_timeout is not None
        async with self.volumes.mutation:
            self.volumes.check_ready(names)
            ids = self._snapshot_ids(request, names)
            await self._check_limits(names, set_id, ids)
            roots = [root for name in names for root in self.volumes.volume_paths(name)]
            involved = await self._involved(session, request, wanted, roots, event_timeout)
            session.claim(involved)
            for record in involved:
                record.begin_sequence()
            created = statedir.utc_now()
            writer_ids = [r.identity.instance_id for r in involved]
            await trio.to_thread.run_sync(self.sets.begin, set_id, context, created, session.pid, names,
                                          writer_ids, label)
            if context.auto_release:
                session.auto_release.append(set_id)
            payload = self.payload(session, {**request, "context": context.value}, roots)
            payload["set_id"] = set_id
            try:
                taken, post = await self._sequence(involved, payload, names, set_id, ids, created,
                                                   event_timeout, freeze_timeout)
            except BaseException:
                with trio.CancelScope(shield=True):
                    session.release(involved)
                    await trio.to_thread.run_sync(self.sets.forget, [set_id])
                    if set_id in session.auto_release:
                        session.auto_release.remove(set_id)
                raise
            await self._finish(set_id, taken)
            if not context.involves_writers or protocol.document(request, "bcd") is None:
                session.release(involved)  # no backup document: nothing follows PostSnapshot
        log.info("created snapshot set %s (%s) of %s with %d writer(s)", set_id, context.value,
                 ", ".join(names), len(involved))
        return {"set_id": set_id, "created": created, "context": context.value,
                "attributes": int(protocol.context_attributes(context)),
                "snapshots": [{"id": ids[n], "volume": n, "seq": taken.seqs[n],
                               "path": statedir.snapshot_path(self.volumes.mount_root, set_id, n)}
                              for n in names],
                "held_ms": taken.held_ms,
                "writers": [o.to_json() for o in post]}

    @staticmethod
    def _volume_names(request: Frame) -> list[str]:
        names = request.get("volumes")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise frames.RequestError("request field 'volumes' must be a non-empty list of volume names")
        if len(set(names)) != len(names):
            raise frames.RequestError("a volume is named twice in the snapshot set")
        if len(names) > protocol.MAX_VOLUMES_PER_SET:
            raise frames.RequestError(f"a snapshot set holds at most {protocol.MAX_VOLUMES_PER_SET} volumes "
                                   f"({len(names)} given)")
        return names

    @staticmethod
    def _snapshot_ids(request: Frame, names: list[str]) -> dict[str, str]:
        """The requester's snapshot ids (AddToSnapshotSet gave them out), else new ones."""
        given = request.get("snapshot_ids")
        if given is None:
            return {name: str(uuid.uuid4()) for name in names}
        if not isinstance(given, dict) or sorted(given) != sorted(names):
            raise frames.RequestError("request field 'snapshot_ids' must map every volume of the set "
                                      "to a UUID")
        ids = {name: protocol.guid(given, name) or "" for name in names}
        if len(set(ids.values())) != len(ids):
            raise frames.RequestError("request field 'snapshot_ids' gives one id to two volumes")
        return ids

    async def _check_limits(self, names: list[str], set_id: str, ids: dict[str, str]) -> None:
        counts: dict[str, int] = {}
        for volume, known_set, known_snapshot in await self.volumes.snapshot_ids():
            if known_set == set_id or known_snapshot in ids.values():
                raise frames.RequestError(f"snapshot set {set_id} or one of its snapshot ids exists already")
            counts[volume] = counts.get(volume, 0) + 1
        for name in names:
            if counts.get(name, 0) >= self.max_snapshots:
                raise frames.RequestError(f"volume {name} already has {counts[name]} snapshots, the most "
                                       f"allowed ({self.max_snapshots}); delete some first")

    async def _finish(self, set_id: str, taken: TakenSet) -> None:
        """Record the set as whole and have the browser show it, both before the reply: side by
        side, as neither needs the other (each waits on a different disk or process)."""
        failed: list[Exception] = []

        async def finish() -> None:
            try:
                await trio.to_thread.run_sync(self.sets.finish, set_id, taken.held_ms)
            except Exception as exc:  # noqa: BLE001 - raised below, unwrapped from the nursery's group
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.volumes.refresh_browser)  # logs its own failures, never raises
            nursery.start_soon(finish)
        if failed:
            raise failed[0]

    async def _involved(self, session: Session, request: Frame, wanted: bool | list[Any],
                        roots: list[str], timeout: float) -> list[WriterRecord]:
        """Writers named by the requester, plus every writer whose files lie on a volume of the set."""
        if wanted is False:
            return []
        named = self._writers_of({"writers": wanted}, session) if isinstance(wanted, list) else []
        unknown = [r for r in self.registry.writers.values() if r.paths is None and r not in named]
        if unknown:  # learn what they touch
            await self.broadcast(unknown, Event.IDENTIFY, self.payload(session, request), timeout)
        touching = [r for r in self.registry.writers.values() if r.connected and r.touches(roots)]
        return list({r.identity.instance_id: r for r in named + touching}.values())

    async def _sequence(self, involved: list[WriterRecord], payload: EventPayload, names: list[str],
                        set_id: str, ids: dict[str, str], created: str, event_timeout: float,
                        freeze_timeout: float | None) -> tuple[TakenSet, list[Outcome]]:
        """PrepareForSnapshot, Freeze, hold/commit/release, Thaw, PostSnapshot; abort on any failure."""
        taken = TakenSet()
        try:
            await self._step(involved, Event.PREPARE_SNAPSHOT, payload, event_timeout)
            limits = [w.freeze_timeout for w in involved] + ([freeze_timeout] if freeze_timeout else [])
            timeout = min(limits, default=protocol.DEFAULT_FREEZE_TIMEOUT)
            await self._step(involved, Event.FREEZE, payload, timeout)
            taken = await self.volumes.take_set(names, set_id, ids, created)
            await self._step(involved, Event.THAW, payload, event_timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                if taken.seqs:
                    await self._delete_quietly(set_id)
                await self._abort(involved, payload)
            raise
        post = await self.broadcast(involved, Event.POST_SNAPSHOT, payload, event_timeout)
        return taken, post

    async def _step(self, involved: list[WriterRecord], event: Event, payload: EventPayload,
                    timeout: float) -> None:
        if not involved:
            return
        failed = [o for o in await self.broadcast(involved, event, payload, timeout) if not o.ok]
        if failed:
            raise SetAborted("snapshot set aborted: " + "; ".join(o.describe() for o in failed))

    async def _delete_quietly(self, set_id: str) -> None:
        try:
            await self.volumes.delete_set(set_id)
        except Exception as exc:  # noqa: BLE001 - logged; the set's entry stays for the next start
            log.error("could not delete the snapshots of aborted set %s: %s", set_id, exc)

    async def _abort(self, involved: list[WriterRecord], payload: EventPayload) -> None:
        """Abort every writer of a failed sequence: wait for the healthy, not for the silent ones."""
        silent = [w for w in involved if not w.connected or w.failure is WriterFailure.TIMEOUT]
        healthy = [w for w in involved if w not in silent]
        if silent and self.background is not None:
            self.background.start_soon(self.broadcast, silent, Event.ABORT, payload, protocol.ABORT_TIMEOUT)
        with trio.move_on_after(protocol.ABORT_TIMEOUT + 1.0):
            await self.broadcast(healthy, Event.ABORT, payload, protocol.ABORT_TIMEOUT)

    # ---- end of a session ------------------------------------------------------------------------

    async def end_session(self, session: Session, *, closing: bool) -> SessionEndReply:
        """BackupShutdown to the session's writers and deletion of its auto-release sets."""
        shutdown = [w for w in session.sequenced.values() if w.owner in (None, session)]
        if closing:
            session.closed = True
        payload: EventPayload = {"session": session.session_id, "volumes": []}
        outcomes = await self.broadcast([w for w in shutdown if w.connected], Event.BACKUP_SHUTDOWN, payload,
                                        protocol.ABORT_TIMEOUT)
        session.release()
        session.sequenced.clear()
        released = await self.release_sets(list(session.auto_release))
        session.auto_release.clear()
        return {"writers": [o.to_json() for o in outcomes], "deleted_sets": released}

    async def release_sets(self, set_ids: list[str]) -> list[str]:
        """Delete auto-release sets (one mutation at a time) and forget them."""
        if not set_ids:
            return []
        done = []
        async with self.volumes.mutation:
            for set_id in set_ids:
                try:
                    await self.volumes.delete_set(set_id)
                    done.append(set_id)
                    log.info("released auto-release snapshot set %s", set_id)
                except Exception as exc:  # noqa: BLE001 - the entry stays; the next daemon start retries
                    log.error("could not release snapshot set %s: %s", set_id, exc)
            await trio.to_thread.run_sync(self.sets.forget, done)
        return done


# a requester call the service hands to the broker: the session, the request, its reply's fields
Handler = Callable[[Session, Frame], Awaitable[Message]]
