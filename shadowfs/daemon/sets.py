"""Snapshot sets across volumes: taking one as a single instant, and deleting sets and snapshots.

One job: the daemon's side of the snapshot-set sequence (design §4.1), carried out over
the mount processes' control channels (``hold``, ``commit``, ``release``,
``delete``). `SetCoordinator` is given how to reach a ready volume's channel
and how to list the snapshots; the caller (the daemon, for the VSS service
and the CLI) runs these one at a time under `Daemon.mutation`.

Invariants:
- A set is taken as: hold on all volumes at once -> commit-and-release on
  each (one request records the snapshot and opens the gate) -> release every
  volume still held, always, also on failure or cancellation. Every volume
  was held at the moment the last hold answered and none changed between
  then and its own commit, so the set is that one instant.
- If anything fails, the snapshots already committed in the set are deleted
  before the error is raised (a set is all its volumes or nothing).
- Every request to all volumes is sent at once and bounded in time; each
  failure or timeout becomes one error line naming the volume.
- Snapshots are deleted through their volume's mount process (never in the
  diff area directly), so its graveyard entries go too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from shadowfs.daemon.children import CALL_TIMEOUT
from shadowfs.errors import SetAborted, SnapshotHeld
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.messages import DeletedSnapshot, DeleteRequest, MountRequest
from shadowfs.service.broker import SnapshotRow, TakenSet

log = logging.getLogger(__name__)

HOLD_TIMEOUT = 10.0
RELEASE_TIMEOUT = 5.0


class SetCoordinator:
    """Takes and deletes snapshot sets over the mount processes' control channels."""

    def __init__(self, ready_channel: Callable[[str], Channel],
                 all_snapshots: Callable[[], Awaitable[list[tuple[str, SnapshotRow]]]]) -> None:
        """`ready_channel(volume)`: the channel of a ready mount process (RequestError if none);
        `all_snapshots()`: (volume, snapshot record) of every snapshot of every volume."""
        self._ready_channel = ready_channel
        self._all_snapshots = all_snapshots

    async def take(self, names: list[str], set_id: str, ids: dict[str, str], created: str) -> TakenSet:
        """Take set `set_id` of volumes `names`, snapshot `ids[volume]` on each (see `_take_set`)."""
        channels = {name: self._ready_channel(name) for name in names}
        return await self._take_set(channels, set_id, ids, created)

    async def delete_set(self, set_id: str) -> int:
        """Delete every snapshot of set `set_id`; how many there were."""
        records = [(v, r) for v, r in await self._all_snapshots() if r["set_id"] == set_id]
        for volume, record in records:
            channel = self._ready_channel(volume)
            await channel.call(_delete(record["seq"]), timeout=CALL_TIMEOUT)
            log.info("deleted snapshot %s of volume %s", record["snapshot_id"], volume)
        return len(records)

    async def delete(self, wanted: str, force: bool = False) -> tuple[list[DeletedSnapshot], int]:
        """Delete snapshot or snapshot set `wanted`: (the snapshots deleted, bytes freed). One
        held snapshot among them refuses the whole request, unless `force`."""
        matches = [(v, r) for v, r in await self._all_snapshots()
                   if wanted in (r["snapshot_id"], r["set_id"])]
        if not matches:
            raise frames.RequestError(f"unknown snapshot or snapshot set {wanted}")
        held = [(v, r) for v, r in matches if r["held"] is not None]
        if held and not force:
            volume, record = held[0]
            raise SnapshotHeld(f"snapshot {record['snapshot_id']} of volume {volume} is held (since "
                          f"{record['held']}): release it (shadowfs snapshot release) or delete with --force")
        freed = 0
        deleted: list[DeletedSnapshot] = []
        for volume, record in matches:
            reply = await self._ready_channel(volume).call(_delete(record["seq"], force),
                                                           timeout=CALL_TIMEOUT)
            freed += int(reply.get("freed", 0))
            deleted.append({"id": record["snapshot_id"], "set_id": record["set_id"], "volume": volume})
            log.info("deleted snapshot %s of volume %s", record["snapshot_id"], volume)
        return deleted, freed

    async def _take_set(self, channels: dict[str, Channel], set_id: str, ids: dict[str, str],
                        created: str) -> TakenSet:
        """Hold all, then commit-and-release each; release all still held (always); on failure
        undo what was committed.

        Each volume's gate opens in the same request that records its snapshot: every
        volume was held at the moment the last hold answered, and none changed between
        that moment and its own commit, so the set is that one instant, and a change
        reaching a volume after its release is captured under the new snapshot. This saves
        the hold a round trip to the daemon. The replies say how long each mount process
        kept its gate closed.
        """
        taken = TakenSet()
        try:
            errors = await self._on_all(channels, lambda _n: {"op": "hold", "timeout": HOLD_TIMEOUT},
                                        HOLD_TIMEOUT, "hold")
            if not errors:
                errors = await self._on_all(
                    channels, lambda n: {"op": "commit", "snapshot_id": ids[n], "set_id": set_id,
                                         "created": created, "release": True}, HOLD_TIMEOUT, "commit",
                    taken.note_commit)
            if errors:
                raise SetAborted("snapshot set aborted: " + "; ".join(errors))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._undo(channels, taken.seqs)
            raise
        finally:
            held = {n: c for n, c in channels.items() if n not in taken.held_ms}
            with trio.CancelScope(shield=True):
                await self._on_all(held, lambda _n: {"op": "release"}, RELEASE_TIMEOUT, "release",
                                   taken.note_release)
        return taken

    async def _on_all(self, channels: dict[str, Channel], make: Callable[[str], MountRequest],
                      timeout: float, what: str,
                      collect: Callable[[str, frames.Frame], None] | None = None) -> list[str]:
        """Send one request to every volume at once; return one error line per failure.

        `collect(volume, reply)` reads each successful reply (KeyError, ValueError or
        TypeError there counts as that volume's failure).
        """
        errors: list[str] = []
        answered: set[str] = set()

        async def one(name: str, channel: Channel) -> None:
            try:
                reply = await channel.call(make(name), timeout=timeout)
                if collect is not None:
                    collect(name, reply)
            except (frames.RemoteError, frames.CallTimeout, frames.ChannelClosed, OSError, KeyError,
                    ValueError,
                    TypeError) as exc:
                errors.append(f"{what} on volume {name} failed: {exc}")
                log.warning("%s on volume %s failed: %s", what, name, exc)
            answered.add(name)

        with trio.move_on_after(timeout + 1.0):
            async with trio.open_nursery() as nursery:
                for name, channel in channels.items():
                    nursery.start_soon(one, name, channel)
        errors.extend(f"{what} on volume {name} timed out after {timeout:g} s"
                      for name in channels if name not in answered)
        return errors

    async def _undo(self, channels: dict[str, Channel], committed: dict[str, int]) -> None:
        for name, seq in committed.items():
            try:
                await channels[name].call(_delete(seq), timeout=CALL_TIMEOUT)
            except (frames.RemoteError, frames.CallTimeout, frames.ChannelClosed, OSError) as exc:
                log.error("volume %s: could not delete snapshot seq %d of an aborted set: %s", name, seq, exc)


def _delete(seq: int, force: bool = False) -> DeleteRequest:
    return {"op": "delete", "seq": seq, "force": force}


__all__ = ["HOLD_TIMEOUT", "RELEASE_TIMEOUT", "SetCoordinator"]
