"""Holds, pruning and the diff area's limit: which snapshots stay, asked of the daemon.

One job: `snapshot hold` / `snapshot release` (zfs hold: a held snapshot is
deleted neither by `snapshot delete` without force, nor by `snapshot prune`,
nor by the diff area's limit), `snapshot prune` (restic forget's rules,
`snapshot.retention`, applied to each volume's snapshots on their own) and
`volume set --max-diff-area` (the limit, applied by the mount process).

Invariants:
- A hold is recorded by the volume's mount process in the snapshot's record
  in the diff area (`set_held`), so the limit, which runs in that process,
  sees it, and it survives restarts of the daemon and the mount.
- Prune decides from one listing, then deletes one snapshot at a time through
  the mount processes (`delete`, never with force): a snapshot held after the
  listing is refused by its mount process and reported as kept ("held").
- A dry run deletes nothing and answers what a real run would do now.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from shadowfs import statedir
from shadowfs.daemon import requests
from shadowfs.daemon.children import CALL_TIMEOUT
from shadowfs.errors import SnapshotHeld
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.frames import Frame
from shadowfs.ipc.messages import (
    DeleteRequest,
    HeldSnapshot,
    PrunedSnapshot,
    SetHeldRequest,
    SetMaxRequest,
    SnapshotHoldReply,
    SnapshotPruneReply,
    SnapshotPruneRequest,
    VolumeSetReply,
)
from shadowfs.service.broker import SnapshotRow
from shadowfs.service.core import Service
from shadowfs.snapshot.retention import Policy, Stamped, decide, parse_created
from shadowfs.statedir import VolumeTable

log = logging.getLogger(__name__)


class DaemonSide(Protocol):
    """What the retention requests need of the daemon."""

    mutation: trio.Lock  # snapshot sets change one request at a time
    table: VolumeTable

    async def refresh_browser(self) -> None: ...  # sets went: the browser forgets them

    @property
    def service(self) -> Service: ...


class Retention:
    """Holds and prune over the mount processes' control channels."""

    def __init__(self, ready_channel: Callable[[str], Channel],
                 all_snapshots: Callable[[], Awaitable[list[tuple[str, SnapshotRow]]]],
                 daemon: DaemonSide) -> None:
        self._ready_channel = ready_channel
        self._all_snapshots = all_snapshots
        self._daemon = daemon

    # ---- requests ------------------------------------------------------------------------------

    async def op_hold(self, request: Frame) -> SnapshotHoldReply:
        """`snapshot_hold` and `snapshot_release`."""
        checked = requests.snapshot_hold_request(request)
        async with self._daemon.mutation:
            return await self.hold(checked["snapshot"], checked["op"] == "snapshot_hold")

    async def op_prune(self, request: Frame) -> SnapshotPruneReply:
        checked = requests.snapshot_prune_request(request)
        if checked["volume"] is not None:
            self._daemon.table.get(checked["volume"])  # an unknown volume is refused, not pruned as empty
        async with self._daemon.mutation:
            try:
                reply = await self.prune(checked)
            finally:
                if not checked["dry_run"]:
                    await self._daemon.refresh_browser()
            if reply["remove"] and not reply["dry_run"]:
                await self._daemon.service.prune()
        return reply

    async def op_volume_set(self, request: Frame) -> VolumeSetReply:
        """`volume set NAME --max-diff-area SIZE` (the diff area's limit, which decides when the
        oldest unheld snapshot goes): the mount process applies it at once, then the table keeps it."""
        checked = requests.volume_set_request(request)
        size = checked["max_diff_area_bytes"]
        assert isinstance(size, int)  # parsed by `volume_set_request`
        async with self._daemon.mutation:
            volume = self._daemon.table.get(checked["name"])
            set_max: SetMaxRequest = {"op": "set_max", "bytes": size}
            await self._ready_channel(volume.name).call(set_max, timeout=CALL_TIMEOUT)
            volume = dataclasses.replace(volume, max_diff_area_bytes=size)
            self._daemon.table.volumes[volume.name] = volume
            await trio.to_thread.run_sync(self._daemon.table.save)
        log.info("volume %s: diff area limit set to %d bytes", volume.name, size)
        return {"volume": requests.volume_config(volume)}

    # ---- the work ------------------------------------------------------------------------------

    async def hold(self, wanted: str, hold: bool) -> SnapshotHoldReply:
        """Hold (or release) snapshot `wanted`, or every snapshot of set `wanted`."""
        matches = [(v, r) for v, r in await self._all_snapshots()
                   if wanted in (r["snapshot_id"], r["set_id"])]
        if not matches:
            raise frames.RequestError(f"unknown snapshot or snapshot set {wanted}")
        since = statedir.utc_now() if hold else None
        changed: list[HeldSnapshot] = []
        for volume, record in matches:
            held = record["held"] if hold and record["held"] is not None else since  # keep the first time
            request: SetHeldRequest = {"op": "set_held", "seq": record["seq"], "held": held}
            await self._ready_channel(volume).call(request, timeout=CALL_TIMEOUT)
            changed.append({"id": record["snapshot_id"], "set_id": record["set_id"], "volume": volume,
                            "held": held})
            log.info("snapshot %s of volume %s %s", record["snapshot_id"], volume,
                     "held" if hold else "released")
        return {"snapshots": changed}

    async def prune(self, request: SnapshotPruneRequest) -> SnapshotPruneReply:
        policy = Policy(**request["keep"])
        try:
            policy.check()
        except ValueError as exc:
            raise frames.RequestError(str(exc)) from None
        everything = await self._all_snapshots()
        wanted_volume = request["volume"]  # known to the daemon (checked by the caller)
        wanted_label = request.get("label")
        by_volume: dict[str, list[SnapshotRow]] = {}
        for volume, record in everything:
            if wanted_label is not None and self._label_of(record["set_id"]) != wanted_label:
                continue  # another job's set: neither kept nor removed by this prune
            if wanted_volume is None or volume == wanted_volume:
                by_volume.setdefault(volume, []).append(record)
        reply: SnapshotPruneReply = {"keep": [], "remove": [], "dry_run": request["dry_run"], "freed": 0}
        for volume, records in sorted(by_volume.items()):
            stamped = [Stamped(r["snapshot_id"], parse_created(r["created"]), r["seq"]) for r in records]
            decision = decide(stamped, policy)
            for record in sorted(records, key=lambda r: r["seq"], reverse=True):
                reasons = list(decision.keep.get(record["snapshot_id"], []))
                if record["held"] is not None:
                    reasons.append("held")
                if not reasons and not request["dry_run"]:
                    freed = await self._delete(volume, record)
                    if freed is None:
                        reasons.append("held")
                    else:
                        reply["freed"] += freed
                entry: PrunedSnapshot = {"id": record["snapshot_id"], "set_id": record["set_id"],
                                         "volume": volume, "created": record["created"], "reasons": reasons}
                reply["keep" if reasons else "remove"].append(entry)
        return reply

    def _label_of(self, set_id: str) -> str | None:
        return self._daemon.service.snapshot_extra(set_id)["label"]

    async def _delete(self, volume: str, record: SnapshotRow) -> int | None:
        """Delete one snapshot without force: bytes freed, or None when it is held by now."""
        request: DeleteRequest = {"op": "delete", "seq": record["seq"], "force": False}
        try:
            reply = await self._ready_channel(volume).call(request, timeout=CALL_TIMEOUT)
        except frames.RemoteError as exc:
            if exc.kind == SnapshotHeld.kind:
                return None
            raise
        log.info("prune: deleted snapshot %s of volume %s", record["snapshot_id"], volume)
        return int(reply.get("freed", 0))
