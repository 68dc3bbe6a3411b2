"""The daemon's mount processes, one per volume: started, adopted, taken over, never left exposed.

One job: keep each volume protected by a running mount process (design §9).
At start, a mount process that outlived an earlier daemon is adopted (it
listens on an abstract socket named after the state directory and volume,
`statedir.mount_socket_name`). While one runs, what its successor would need
is kept (`KeptConnection`: duplicates of its FUSE connection and its change
watcher, handed over with its ready event). When one dies with its mount
still in place, the next one takes the mount over (``--fuse-fd``: no unmount,
no window, design §9.2); a dead mount that cannot be taken over, or a mount
taken away from under its process, is cleaned up and the volume mounted
again, and the new process marks what changed meanwhile (`live.lapse`).

Invariants:
- A kept descriptor is closed as soon as it can no longer serve: its mount is
  gone or replaced, the volume removed, the daemon stopping.
- A mount is left in place after its process died only if we keep its FUSE
  connection and it is still the top mount at the volume's path with the
  device number its process reported; anything else is unmounted
  (`mounts.unmount_if_ours`: only shadowfs FUSE mounts at our own paths).
- Supervision itself (restart, backoff, stop, detach) is `children.Child`'s.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from shadowfs import statedir
from shadowfs.daemon.children import Child, connect_running
from shadowfs.ipc import frames
from shadowfs.ipc.frames import Frame
from shadowfs.ipc.messages import EXIT_MOUNT_GONE, StopRequest
from shadowfs.linux import mounts
from shadowfs.statedir import Volume, VolumeTable

log = logging.getLogger(__name__)


@dataclass
class KeptConnection:
    """What the daemon keeps of a running mount process so that a successor can take over its mount
    without unmounting it: duplicates of its FUSE connection and of its change watcher."""

    fuse: int | None
    watch: int | None
    pid: int
    mount_dev: str


class VolumeMounts:
    """The mount process of every volume (see the module docstring)."""

    def __init__(self, state_dir: str, table: VolumeTable, backing_fds: dict[str, int]) -> None:
        self.state_dir = state_dir
        self.table = table
        self.backing_fds = backing_fds  # the daemon's: shared, per volume
        self.children: dict[str, Child] = {}
        self.kept: dict[str, KeptConnection] = {}
        self._adoptable: dict[str, tuple[int, socket.socket]] = {}
        # called after a mount process deleted a snapshot by itself (its diff area was full)
        self.on_snapshot_deleted: Callable[[], Awaitable[None]] | None = None
        # called with (volume, inodes) after a mount process marked objects damaged
        self.on_damage: Callable[[str, list[int]], Awaitable[None]] | None = None

    # ---- start ---------------------------------------------------------------------------------

    def find_running(self, volume: Volume) -> bool:
        """Blocking, at daemon start: is a mount process of `volume` running? Then it is adopted."""
        running = connect_running(statedir.mount_socket_name(self.state_dir, volume.name))
        if running is None:
            return False
        self._adoptable[volume.name] = running
        log.info("volume %s: adopting its running mount process (pid %d)", volume.name, running[0])
        return True

    def is_adoptable(self, name: str) -> bool:
        return name in self._adoptable

    def start(self, nursery: trio.Nursery, volume: Volume,
              on_ready: Callable[[Child], Awaitable[None]]) -> Child:
        os.makedirs(statedir.volume_dir(self.state_dir, volume.name), mode=0o700, exist_ok=True)
        args = ["--volume", volume.name, "--backing", volume.backing, "--mount", volume.mount,
                "--diff-area", statedir.diff_area_path(self.state_dir, volume.name),
                "--protection", statedir.protection_path(self.state_dir, volume.name),
                "--listen", statedir.mount_socket_name(self.state_dir, volume.name),
                "--max-diff-area", str(volume.max_diff_area_bytes)]
        if volume.blocks == "volume":
            args.append("--blocks-on-volume")
        stop: StopRequest = {"op": "stop"}
        child = Child(f"mount process of volume {volume.name}", "shadowfs.live.process", args, volume.mount,
                      on_ready=on_ready, on_event=self._event, launch=self._launch,
                      on_ready_event=self._keep_handoff, after_exit=self._after_exit, stop_request=stop,
                      outlives_daemon=True)
        adoptable = self._adoptable.pop(volume.name, None)
        if adoptable is not None:
            child.adopt(*adoptable)
        self.children[volume.name] = child
        nursery.start_soon(child.run)
        return child

    def forget(self, name: str) -> None:
        """The volume is gone: drop what was kept for it."""
        self._drop_kept(name)
        adoptable = self._adoptable.pop(name, None)
        if adoptable is not None:
            adoptable[1].close()

    def close(self) -> None:
        for name in list(self.kept) + list(self._adoptable):
            self.forget(name)

    # ---- what a ready process hands over ------------------------------------------------------

    def _volume_of(self, child: Child) -> Volume | None:
        for name, each in self.children.items():
            if each is child:
                return self.table.volumes.get(name)
        return None

    def _keep_handoff(self, child: Child, event: Frame, fds: list[int]) -> None:
        """Keep what a ready mount process hands over (`MountReadyEvent`): its FUSE connection and
        watcher for a successor, its backing root if we have none (an adopted in-place mount)."""
        volume = self._volume_of(child)
        names = event.get("fds")
        if volume is None or not isinstance(names, list) or len(names) != len(fds):
            frames.close_fds(fds)
            return
        received = dict(zip(names, fds, strict=True))
        backing = received.pop("backing", None)
        if backing is not None:
            if volume.name in self.backing_fds:
                os.close(backing)
            else:
                self.backing_fds[volume.name] = backing
        self._drop_kept(volume.name)
        self.kept[volume.name] = KeptConnection(
            fuse=received.pop("fuse", None), watch=received.pop("watch", None),
            pid=int(event.get("pid") or 0), mount_dev=str(event.get("mount_dev") or ""))
        frames.close_fds(list(received.values()))
        if event.get("took_over"):
            log.info("volume %s: a new mount process (pid %s) took over the mount without unmounting it",
                     volume.name, event.get("pid"))

    def _drop_kept(self, name: str) -> None:
        kept = self.kept.pop(name, None)
        if kept is not None:
            frames.close_fds([fd for fd in (kept.fuse, kept.watch) if fd is not None])

    def _mount_is_kept(self, volume: Volume) -> bool:
        """We keep the FUSE connection of the mount on top at the volume's path."""
        kept = self.kept.get(volume.name)
        return (kept is not None and kept.fuse is not None
                and mounts.top_mount(volume.mount) == (mounts.SHADOWFS_FUSE_TYPE, kept.mount_dev))

    # ---- after a death ---------------------------------------------------------------------------

    def _launch(self, child: Child) -> tuple[list[str], list[int]]:
        """`Child.launch`: take over the mount if the dead process left it with its connection."""
        volume = self._volume_of(child)
        if volume is None:
            return [], []
        backing = self.backing_fds.get(volume.name)
        if backing is None or not self._mount_is_kept(volume):
            self._drop_kept(volume.name)
            return [], []
        kept = self.kept[volume.name]
        assert kept.fuse is not None
        args = ["--fuse-fd", str(kept.fuse), "--backing-fd", str(backing), "--predecessor-pid", str(kept.pid)]
        fds = [kept.fuse, backing]
        if kept.watch is not None:
            args += ["--watch-fd", str(kept.watch)]
            fds.append(kept.watch)
        return args, fds

    def _after_exit(self, child: Child) -> None:
        """`Child.after_exit` (a worker thread): leave a mount whose connection we keep for the
        successor; remove any other one (dead, or not there any more)."""
        volume = self._volume_of(child)
        if volume is None:
            mounts.unmount_if_ours(child.mount_path)
            return
        if self._mount_is_kept(volume):
            log.warning("volume %s: its mount process died; the mount stays in place (requests to it "
                        "wait) until a new process takes it over", volume.name)
            return
        self._drop_kept(volume.name)
        if child.last_exit == EXIT_MOUNT_GONE or mounts.top_mount(volume.mount) is None:
            log.warning("volume %s: its live mount was taken away; mounting it again (what changed "
                        "meanwhile reads as damaged in earlier snapshots)", volume.name)
        mounts.unmount_if_ours(volume.mount)

    # ---- events --------------------------------------------------------------------------------

    async def _event(self, child: Child, event: Frame, fds: list[int]) -> None:
        frames.close_fds(fds)
        if event.get("event") == "snapshot_deleted":
            log.warning("%s: snapshot %s (seq %s) was deleted: %s", child.label, event.get("snapshot_id"),
                        event.get("seq"), event.get("reason", "no reason given"))
            if self.on_snapshot_deleted is not None:
                await self.on_snapshot_deleted()
        elif event.get("event") == "damage":
            paths = event.get("paths")
            named = ", ".join(str(p) for p in paths) if isinstance(paths, list) else ""
            log.warning("%s: %s object(s) %s; they read as damaged (EIO) in earlier snapshots: %s",
                        child.label, event.get("count"), event.get("cause"), named)
            inos = event.get("inos")
            volume = next((name for name, known in self.children.items() if known is child), None)
            if self.on_damage is not None and volume is not None and isinstance(inos, list):
                await self.on_damage(volume, [ino for ino in inos if isinstance(ino, int)])
        else:
            log.info("%s: event %s", child.label, event)
