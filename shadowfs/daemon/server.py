"""The shadowfs daemon: its state, the CLI socket server and the dispatch of requests.

One job: keep one live mount process per volume (`mounts.VolumeMounts`) and
one snapshot browser process running (each a `children.Child`), and carry out the CLI's requests
(`volume_*`, `snapshot_*`, `status`) against them; snapshot sets are taken
and deleted by `sets.SetCoordinator`. It never touches file data itself; it
reads snapshot records and damage marks from the diff areas read-only
(`areas.DiffAreaReader`). Writers and requesters (the VSS
service) are `shadowfs.service`: every connection is handed to
`Service.connect`, every service op (`snapshot_create` included) to
`Service.handle`, and the daemon gives the service its volumes through
`volume_paths`, `check_ready`, `take_set`, `delete_set` and `snapshots`.

Invariants:
- One daemon per state directory (`statedir.DaemonLock`).
- Stopping the daemon (SIGTERM, SIGINT, `shutdown`) never unprotects a volume:
  mount processes are detached and go on; a starting daemon adopts them. Only
  `volume_remove` and `shutdown` with "unprotect" stop them (design §9.1).
- The daemon opens every backing directory before any mount can be over it
  (at start, after removing stale shadowfs mounts at its own mount paths; at
  `volume add`, before starting the volume's mount process), or receives it
  from an adopted mount process, keeps those descriptors, and hands them to
  the browser with the `volumes` message.
- `ready` (and READY=1 on $NOTIFY_SOCKET, once) only when every volume's mount
  process serves and the browser has taken the volume list (design §9.4);
  until then a request that needs a volume fails with `DaemonStarting`.
- The daemon unmounts only its own mount paths (volume mounts and
  `<mount root>/snapshots`), and only FUSE mounts of type `fuse.shadowfs`.
- Snapshot-set creation, snapshot deletion and volume add/remove run one at a
  time (`Daemon.mutation`). A set is held on all of its volumes at once,
  committed on each, and released on all, always; if anything fails, the
  snapshots already committed in that set are deleted before the error reply
  (`sets`).
- `volume add` refuses a backing directory that any process holds (an open
  file, a working or root directory, a memory mapping: `linux.busy`), as
  umount refuses a busy mount, unless forced; forced, it logs the holders. The
  scan runs in a worker thread, before the daemon opens the directory.
- Every child process runs in its own session, so a Ctrl-C reaches only the
  daemon; children it stops are stopped in order: a `stop` request (mount
  processes), SIGTERM, then SIGKILL after `children.STOP_TIMEOUT`.
- Each request is checked into its `ipc.messages` type (`requests`) before it
  is carried out, and each reply is built as its type.

Requests on `<state>/daemon.sock` (the frame's own "id" is the request id; a
refusal or failure is `{"ok": false, "error", "kind"}` with the kind of its
`shadowfs.errors` class, e.g. "invalid", "refused", "set_aborted"):

    {"op": "volume_add", "name", "backing", "mount": PATH|null, "max_diff_area_bytes": N|"10G"|null,
     "force": bool, "blocks": "volume"|"state"|null}
        -> {"volume": {name, index, backing, mount, max_diff_area_bytes, created, blocks}}
        (refused with kind "busy" while processes hold anything in the backing directory, unless
        "force")
    {"op": "volume_list"} -> {"volumes": [{name, index, backing, mount, snapshots, diff_area_bytes,
                                           max_diff_area_bytes, created, state}]}
    {"op": "volume_remove", "name", "force": bool} -> {"removed", "snapshots_deleted"}
    {"op": "volume_backing", "name"} -> {"volume", "root_ino"} with a read-only descriptor of the
        volume's backing directory (for a backup that reads a snapshot in its own process, by
        inode, with `snapshot.view.SnapshotView`; only root and the daemon's own user may connect)
    {"op": "snapshot_create", "volumes": [names], "context"?, "writers"?: bool|[ids], "freeze_timeout"?, ...}
        -> {"set_id", "created", "context", "attributes", "snapshots": [{"id", "volume", "seq", "path"}],
            "held_ms": {volume: ms}, "writers": [...]}  (shadowfs.service.broker)
    {"op": "snapshot_list"} -> {"snapshots": [{id, set_id, volume, created, seq, path, diff_area_bytes,
                         damaged_objects, held, exposed, previous_version, context, attributes}]}
    {"op": "snapshot_delete", "snapshot": SNAPSHOT_ID|SET_ID} -> {"deleted": [...], "freed"}
    {"op": "snapshot_damage", "snapshot": SNAPSHOT_ID} -> {"snapshot", "volume", "set_id",
        "damaged": [{"ino", "path", "cause", "found"}], "total"}  (objects that changed while
        protection had lapsed, design §9.3: reading them in this snapshot fails with EIO; read from
        the diff area; as many as fit in a frame, `total` says how many there are: `daemon.areas`)
    {"op": "status"} -> {"version", "pid", "state_dir", "mount_root", "ready", "browser": {...},
                         "volumes": [...]}
    {"op": "shutdown", "unprotect": bool} -> {"stopping", "unprotect"}: the daemon stops after the
        reply; mount processes go on protecting unless "unprotect"
    writer and requester ops: see shadowfs.service.protocol
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

import trio

import shadowfs
from shadowfs import logsetup, statedir
from shadowfs.daemon import notify, requests
from shadowfs.daemon.areas import DiffAreaReader
from shadowfs.daemon.browserlink import BrowserLink
from shadowfs.daemon.children import CALL_TIMEOUT, Child, wait_any
from shadowfs.daemon.exposures import Exposures
from shadowfs.daemon.mounts import VolumeMounts
from shadowfs.daemon.retention import Retention
from shadowfs.daemon.sets import SetCoordinator
from shadowfs.diffarea.schema import Seq
from shadowfs.errors import (
    AccessDenied,
    ChildFailed,
    ConfigError,
    DaemonStarting,
    IOFailed,
    ShadowfsError,
    TreeBusy,
)
from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel
from shadowfs.ipc.frames import Frame, Message
from shadowfs.ipc.messages import (
    BrowserEntry,
    BrowserVolume,
    DeleteRequest,
    ShutdownReply,
    SnapshotDamageReply,
    SnapshotDeleteReply,
    SnapshotEntry,
    SnapshotListReply,
    StatusReply,
    VolumeAddReply,
    VolumeBackingReply,
    VolumeEntry,
    VolumeListReply,
    VolumeRemoveReply,
    VolumesRequest,
    VolumeStatus,
)
from shadowfs.linux import busy, mounts
from shadowfs.service import protocol
from shadowfs.service.broker import SnapshotRow, TakenSet
from shadowfs.service.connection import BoundedChannel, Connection
from shadowfs.service.core import Service
from shadowfs.statedir import Volume, VolumeTable

log = logging.getLogger(__name__)

DISCONNECT_TIMEOUT = 60.0


# --- the daemon -----------------------------------------------------------------------------------------

Op = Callable[[Frame], Awaitable[Message | tuple[Message, list[int]]]]


class Daemon:
    """State of one running daemon; `serve` is its life."""

    def __init__(self, state_dir: str, mount_root: str,
                 max_snapshots: int = protocol.DEFAULT_MAX_SNAPSHOTS_PER_VOLUME) -> None:
        self.state_dir = state_dir
        self.mount_root = mount_root
        self.browser_path = statedir.browser_mount(mount_root)
        self.table = VolumeTable(state_dir, mount_root)
        self.backing_fds: dict[str, int] = {}
        self.browser: Child | None = None
        self.readers = DiffAreaReader(state_dir)
        self.volume_mounts = VolumeMounts(state_dir, self.table, self.backing_fds)
        self.browser_link = BrowserLink(lambda: self.browser)
        self.volume_mounts.on_snapshot_deleted = self.refresh_browser
        self.volume_mounts.on_damage = self.browser_link.forget_damaged
        self.mounts = self.volume_mounts.children
        self._shutdown = trio.Event()
        self._unprotect = False
        self._browser_has_volumes = False
        self.ready = False  # every volume protected and the browser serving them (design §9.4)
        self.mutation = trio.Lock()
        self.snapshot_sets = SetCoordinator(self._ready_channel, self._all_snapshots)
        self.retention = Retention(self._ready_channel, self._all_snapshots, self)
        self.exposures = Exposures(state_dir, self)
        self._children: trio.Nursery | None = None
        self.service = Service(self, state_dir, mount_root, max_snapshots)
        self._ops: dict[str, Op] = {
            "volume_add": self.op_volume_add, "volume_list": self.op_volume_list,
            "volume_remove": self.op_volume_remove, "volume_backing": self.op_volume_backing,
            "snapshot_list": self.op_snapshot_list, "snapshot_delete": self.op_snapshot_delete,
            "snapshot_damage": self.op_snapshot_damage, "status": self.op_status,
            "shutdown": self.op_shutdown, "snapshot_hold": self.retention.op_hold,
            "snapshot_release": self.retention.op_hold, "snapshot_prune": self.retention.op_prune,
            "volume_set": self.retention.op_volume_set,
            "snapshot_expose": self.exposures.op_expose, "snapshot_unexpose": self.exposures.op_unexpose,
        }

    # ---- life ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Blocking start-up work before any child runs: table, adoption of the mount processes that
        outlived an earlier daemon, stale mounts, backing fds."""
        statedir.prepare_state_dir(self.state_dir)
        self.table = VolumeTable.load(self.state_dir, self.mount_root)
        self.table.check_layout()
        self.service.load()
        self.volume_mounts.table = self.table
        for volume in self.table.volumes.values():
            if self.volume_mounts.find_running(volume):
                continue  # its backing descriptor comes with its ready event
            mounts.unmount_if_ours(volume.mount)
            try:
                self.backing_fds[volume.name] = self._open_backing(volume)
            except OSError as exc:
                log.error("volume %s: cannot open backing directory %s: %s; not starting it",
                          volume.name, volume.backing, exc.strerror)
        mounts.unmount_if_ours(self.browser_path)
        os.makedirs(self.browser_path, mode=0o755, exist_ok=True)

    @staticmethod
    def _open_backing(volume: Volume) -> int:
        return os.open(volume.backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        self.readers.close()
        frames.close_fds(list(self.backing_fds.values()))
        self.backing_fds.clear()
        self.volume_mounts.close()

    async def serve(self, listener: trio.socket.SocketType) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as children:
                self._children = children
                self.service.start(children)
                async with trio.open_nursery() as clients:
                    clients.start_soon(self._accept_loop, listener, clients)
                    self._start_browser()
                    for volume in self.table.volumes.values():
                        if volume.name in self.backing_fds or self.volume_mounts.is_adoptable(volume.name):
                            self._start_mount(volume)
                    log.info("shadowfs daemon %s serving state %s (pid %d)",
                             shadowfs.__version__, self.state_dir, os.getpid())

                    async def on_signal() -> None:
                        async for signum in signals:
                            log.info("received %s; stopping (volumes stay protected)",
                                     signal.Signals(signum).name)
                            return

                    await wait_any(on_signal, self._shutdown.wait)
                    clients.cancel_scope.cancel()
                await self.exposures.stop_all()
                await self._stop_all(unprotect=self._unprotect)
                children.cancel_scope.cancel()
        log.info("shadowfs daemon stopped")

    async def _stop_all(self, unprotect: bool) -> None:
        """Stop the browser; leave every mount process protecting its volume (`detach`), or with
        `unprotect` stop them too."""
        async with trio.open_nursery() as nursery:
            for child in self.mounts.values():
                nursery.start_soon(child.stop if unprotect else child.detach)
            if self.browser is not None:
                nursery.start_soon(self.browser.stop)
        if unprotect:
            log.warning("every volume is unprotected: changes to the backing directories are no longer "
                        "captured until the daemon runs again")

    # ---- children ------------------------------------------------------------------------------

    def _start_browser(self) -> None:
        assert self._children is not None
        self.browser = Child("snapshot browser", "shadowfs.browser.process", ["--mount", self.browser_path],
                             self.browser_path, on_ready=self._browser_ready)
        self._children.start_soon(self.browser.run)

    def _start_mount(self, volume: Volume) -> Child:
        assert self._children is not None
        return self.volume_mounts.start(self._children, volume, self._mount_ready)

    async def _mount_ready(self, child: Child) -> None:
        await self._send_volumes()
        self._check_ready()

    async def _browser_ready(self, _child: Child) -> None:
        self._browser_has_volumes = False
        await self._send_volumes()
        self._check_ready()

    def _check_ready(self) -> None:
        """The first time every volume is protected and the browser serves them all: READY=1."""
        if self.ready or not self._browser_has_volumes:
            return
        if any(child.channel is None for child in self.mounts.values()):
            return
        self.ready = True
        log.info("ready: %d volume(s) protected, snapshots at %s", len(self.mounts), self.browser_path)
        notify.ready(f"{len(self.mounts)} volume(s) protected")

    async def _send_volumes(self, _child: Child | None = None) -> None:
        """Tell the browser which volumes exist, with one backing-root descriptor each."""
        browser = self.browser
        if browser is None or browser.channel is None:
            return
        volumes = [v for v in sorted(self.table.volumes.values(), key=lambda v: v.index)
                   if v.name in self.backing_fds]
        entries: list[BrowserVolume] = [{"name": v.name, "index": v.index,
                                         "diff_area": statedir.diff_area_path(self.state_dir, v.name)}
                                        for v in volumes]
        fds = [self.backing_fds[v.name] for v in volumes]
        request: VolumesRequest = {"op": "volumes", "volumes": entries}
        try:
            await browser.channel.call(request, fds=fds, timeout=CALL_TIMEOUT)
        except (frames.RemoteError, frames.CallTimeout, frames.ChannelClosed, OSError) as exc:
            log.error("snapshot browser did not take the volume list: %s", exc)
            return
        self._browser_has_volumes = all(name in self.backing_fds for name in self.mounts)

    def _ready_channel(self, name: str) -> Channel:
        child = self.mounts.get(name)
        if (child is None or child.channel is None) and not self.ready:
            raise DaemonStarting(f"the shadowfs daemon is starting: volume {name!r} is not protected yet; "
                                 "try again in a moment")
        if child is None or child.channel is None:
            raise frames.RequestError(f"volume {name!r} is not mounted right now "
                                   "(its mount process is starting or restarting; see the daemon log)")
        return child.channel

    # ---- CLI socket ----------------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(self._client, conn)

    async def _client(self, conn: trio.socket.SocketType) -> None:
        pid, uid, _ = frames.peer_credentials(conn)
        allowed = uid in (0, os.getuid())
        channel = BoundedChannel(conn)
        client = self.service.connect(channel, pid, uid)
        if client is None:
            channel.close()
            return

        async def ignore_event(_event: Frame, fds: list[int]) -> None:
            frames.close_fds(fds)

        async def on_request(request: Frame, fds: list[int]) -> Message | tuple[Message, list[int]]:
            return await self._request(client, request, fds)

        try:
            await channel.run(on_event=ignore_event, on_request=on_request if allowed else self._deny)
        except frames.ProtocolError as exc:
            log.warning("client pid %d sent a malformed frame: %s", pid, exc)
            # the stream cannot be trusted any more: say why, then close it
            with trio.move_on_after(1.0), contextlib.suppress(OSError, frames.ProtocolError,
                                                              trio.BrokenResourceError,
                                                              trio.ClosedResourceError):
                await channel.send(frames.error_reply(None, f"malformed frame: {exc}", exc.kind))
        except OSError as exc:
            log.debug("client pid %d: %s", pid, exc)
        except Exception:
            log.exception("client pid %d: unexpected error; dropping the connection", pid)
        finally:
            channel.close()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + DISCONNECT_TIMEOUT
                await self.service.disconnect(client)

    @staticmethod
    async def _deny(_request: Frame, fds: list[int]) -> Message:
        frames.close_fds(fds)
        raise AccessDenied("permission denied")

    async def _request(self, client: Connection, request: Frame,
                       fds: list[int]) -> Message | tuple[Message, list[int]]:
        """Carry out one client request. Its errors reach the client with their own kind (a
        ConfigError as "invalid", an aborted set as "set_aborted"); a child that refused, failed or
        went silent is the daemon's failure ("child_failed"), never "the daemon is unreachable"."""
        frames.close_fds(fds)
        op = request.get("op")
        try:
            if self.service.handles(op):
                return await self.service.handle(client, request)
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise frames.RequestError(f"unknown operation {op!r}")
            protocol.check_protocol(request)
            return await handler(request)
        except (frames.RemoteError, frames.CallTimeout, frames.ChannelClosed) as exc:
            raise ChildFailed(str(exc)) from exc
        except ShadowfsError:
            raise
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise IOFailed(f"{op}:{where} {exc.strerror or exc}") from exc

    # ---- listing -------------------------------------------------------------------------------

    async def _read_volume(self, name: str) -> tuple[list[SnapshotRow], int]:
        return await trio.to_thread.run_sync(self.readers.read_volume, name)

    async def _all_snapshots(self) -> list[tuple[str, SnapshotRow]]:
        result: list[tuple[str, SnapshotRow]] = []
        for name in sorted(self.table.volumes):
            records, _ = await self._read_volume(name)
            result.extend((name, record) for record in records)
        return result

    def _snapshot_entry(self, volume: str, record: SnapshotRow) -> SnapshotEntry:
        return {"id": record["snapshot_id"], "set_id": record["set_id"], "volume": volume,
                "created": record["created"], "seq": record["seq"],
                "path": statedir.snapshot_path(self.mount_root, record["set_id"], volume),
                "diff_area_bytes": record["bytes"], "damaged_objects": record["damaged"],
                "held": record["held"], "exposed": self.exposures.paths_of(record["snapshot_id"]),
                "previous_version": record["previous_version"],
                **self.service.snapshot_extra(record["set_id"])}

    async def op_snapshot_list(self, _request: Frame) -> SnapshotListReply:
        entries = [self._snapshot_entry(v, r) for v, r in await self._all_snapshots()]
        entries.sort(key=lambda e: (e["created"], e["set_id"], e["volume"]))
        return {"snapshots": entries}

    async def op_snapshot_damage(self, request: Frame) -> SnapshotDamageReply:
        """The objects damaged in one snapshot (design §9.3), read from its diff area."""
        wanted = requests.snapshot_damage_request(request)["snapshot"]
        everything = await self._all_snapshots()
        for volume, record in everything:
            if record["snapshot_id"] != wanted:
                continue
            found = await trio.to_thread.run_sync(self.readers.read_damage, volume, Seq(record["seq"]))
            if found is None:
                break  # deleted meanwhile
            damaged, total = found
            return {"snapshot": wanted, "volume": volume, "set_id": record["set_id"], "damaged": damaged,
                    "total": total}
        if any(record["set_id"] == wanted for _, record in everything):
            raise frames.RequestError(f"{wanted} is a snapshot set: name one of its snapshots")
        raise frames.RequestError(f"unknown snapshot {wanted}")

    async def _volume_entry(self, volume: Volume) -> VolumeEntry:
        records, used = await self._read_volume(volume.name)
        child = self.mounts.get(volume.name)
        return {"name": volume.name, "index": volume.index, "backing": volume.backing, "mount": volume.mount,
                "snapshots": len(records), "diff_area_bytes": used,
                "max_diff_area_bytes": volume.max_diff_area_bytes, "created": volume.created,
                "state": child.state if child is not None else "not started"}

    async def op_volume_list(self, _request: Frame) -> VolumeListReply:
        volumes = sorted(self.table.volumes.values(), key=lambda v: v.index)
        return {"volumes": [await self._volume_entry(v) for v in volumes]}

    async def op_shutdown(self, request: Frame) -> ShutdownReply:
        """Stop the daemon after the reply; with "unprotect", every mount process too."""
        self._unprotect = requests.shutdown_request(request)["unprotect"]
        log.info("asked to stop%s", " and unprotect every volume" if self._unprotect else
                 " (volumes stay protected)")
        self._shutdown.set()
        return {"stopping": True, "unprotect": self._unprotect}

    async def op_status(self, _request: Frame) -> StatusReply:
        volumes: list[VolumeStatus] = []
        for volume in sorted(self.table.volumes.values(), key=lambda v: v.index):
            entry = await self._volume_entry(volume)
            child = self.mounts.get(volume.name)
            volumes.append({**entry, "process": child.describe() if child is not None else None})
        browser: BrowserEntry = {"mount": self.browser_path}
        if self.browser is not None:
            browser = {"mount": self.browser_path, **self.browser.describe()}
        return {"version": shadowfs.__version__, "pid": os.getpid(), "state_dir": self.state_dir,
                "mount_root": self.mount_root, "ready": self.ready, "browser": browser, "volumes": volumes}

    # ---- volumes -------------------------------------------------------------------------------

    async def op_volume_backing(self, request: Frame) -> tuple[VolumeBackingReply, list[int]]:
        name = requests.volume_backing_request(request)["name"]
        fd = self.backing_fds.get(name)
        if name not in self.table.volumes:
            raise frames.RequestError(f"no volume {name!r}")
        if fd is None:
            raise frames.RequestError(f"volume {name}: its backing directory is not open "
                                      "(see the daemon log)")
        return {"volume": name, "root_ino": os.fstat(fd).st_ino}, [fd]

    async def op_volume_add(self, frame: Frame) -> VolumeAddReply:
        request = requests.volume_add_request(frame)
        name, backing = request["name"], request["backing"]
        mount, max_bytes = request.get("mount"), request.get("max_diff_area_bytes")
        assert not isinstance(max_bytes, str)  # parsed by `_volume_add_request`
        async with self.mutation:
            volume = await trio.to_thread.run_sync(self.table.new_volume, name, backing, mount, max_bytes,
                                                   request.get("blocks"))
            await self._check_not_busy(volume, request.get("force", False))
            await trio.to_thread.run_sync(self._prepare_volume_dirs, volume)
            fd = self._open_backing(volume)
            self.backing_fds[volume.name] = fd
            self.table.add(volume)
            child = self._start_mount(volume)
            try:
                await child.wait_first()
            except ChildFailed:
                await self._forget_volume(volume.name)
                raise
            await self._send_volumes()
            log.info("added volume %s: %s mounted at %s", volume.name, volume.backing, volume.mount)
        return {"volume": requests.volume_config(volume)}

    @staticmethod
    async def _check_not_busy(volume: Volume, force: bool) -> None:
        """Refuse a backing directory that processes hold: what they change through what they hold
        would reach the backing directory, not the live mount. Forced, log them and go on. The
        daemon and its children are not counted; they hold nothing there anyway (the daemon opens a
        backing directory only after this, and a new one cannot hold or be inside another volume,
        the state directory or the mount root)."""
        found = await trio.to_thread.run_sync(lambda: busy.holders(volume.backing, ignore=(os.getpid(),)))
        if not found:
            return
        if not force:
            count = len({holder.pid for holder in found})
            raise TreeBusy(f"backing directory {volume.backing} is in use by {count} "
                           f"process{'es' if count > 1 else ''}: {busy.summary(found)}; "
                           "stop them or move them out of it, or add it with --force")
        log.warning("volume %s: adding with --force while processes hold files in %s: %s",
                    volume.name, volume.backing, busy.summary(found, limit=100))

    def _prepare_volume_dirs(self, volume: Volume) -> None:
        leftover = statedir.volume_dir(self.state_dir, volume.name)
        if os.path.exists(leftover):
            log.warning("removing leftover diff area directory %s of an earlier volume", leftover)
            self.readers.close(volume.name)
            statedir.remove_volume_dir(self.state_dir, volume.name)
        if not volume.in_place:
            os.makedirs(volume.mount, mode=0o755, exist_ok=True)

    async def _forget_volume(self, name: str) -> None:
        """Stop the volume's mount process and drop every trace of the volume from the state."""
        child = self.mounts.pop(name, None)
        if child is not None:
            await child.stop()
        self.volume_mounts.forget(name)
        if name in self.table.volumes:
            self.table.remove(name)
        fd = self.backing_fds.pop(name, None)
        await self._send_volumes()
        if fd is not None:
            os.close(fd)
        self.readers.close(name)
        await trio.to_thread.run_sync(statedir.remove_volume_dir, self.state_dir, name)

    async def op_volume_remove(self, frame: Frame) -> VolumeRemoveReply:
        request = requests.volume_remove_request(frame)
        name, force = request["name"], request.get("force", False)
        async with self.mutation:
            volume = self.table.get(name)
            records, _ = await self._read_volume(name)
            if records and not force:
                raise frames.RequestError(f"volume {name!r} has {len(records)} snapshot(s); "
                                       "delete them first or use --force")
            await self.exposures.drop(lambda e: e.volume == name, f"volume {name} is removed")
            for record in records:
                await self._delete_for_removal(name, record)
            await self._forget_volume(name)
            await trio.to_thread.run_sync(self._tidy_backing, volume)
        log.info("removed volume %s (%s)", name, volume.backing)
        return {"removed": name, "snapshots_deleted": len(records)}

    async def _delete_for_removal(self, name: str, record: SnapshotRow) -> None:
        """With --force: delete through the mount process so its graveyard entries go too."""
        try:
            channel = self._ready_channel(name)
            delete: DeleteRequest = {"op": "delete", "seq": record["seq"], "force": True}
            await channel.call(delete, timeout=CALL_TIMEOUT)
        except (frames.RequestError, frames.RemoteError, frames.CallTimeout, frames.ChannelClosed,
                DaemonStarting) as exc:
            log.warning("volume %s: could not delete snapshot %s before removal: %s",
                        name, record["snapshot_id"], exc)

    @staticmethod
    def _tidy_backing(volume: Volume) -> None:
        """Remove the volume's private directories from the backing tree if they are empty."""
        if volume.blocks == "volume":  # its diff area is gone (the mount is too: a path is safe now)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(volume.backing, ".shadowfs", "blocks.dat"))
        for sub in (".shadowfs/graveyard", ".shadowfs"):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(volume.backing, sub))

    # ---- snapshot sets -------------------------------------------------------------------------

    # `service.VolumeOps`: what the service's snapshot-set sequence needs from the volumes. The service
    # holds `self.mutation` around these calls.

    def volume_paths(self, name: str) -> tuple[str, str]:
        volume = self.table.get(name)
        return volume.backing, volume.mount

    def check_ready(self, names: list[str]) -> None:
        for name in names:
            self.table.get(name)
        for name in names:
            self._ready_channel(name)

    async def take_set(self, names: list[str], set_id: str, ids: dict[str, str],
                       created: str) -> TakenSet:
        # on success the service refreshes the browser itself, beside its own last write
        try:
            return await self.snapshot_sets.take(names, set_id, ids, created)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.refresh_browser()
            raise

    async def delete_set(self, set_id: str) -> int:
        try:
            return await self.snapshot_sets.delete_set(set_id)
        finally:
            await self.refresh_browser()

    async def snapshots(self) -> list[tuple[str, SnapshotRow]]:
        return await self._all_snapshots()

    def exposed_paths(self, snapshot_id: str) -> list[str]:
        return self.exposures.paths_of(snapshot_id)

    async def snapshot_ids(self) -> list[tuple[str, str, str]]:
        return await trio.to_thread.run_sync(self.readers.snapshot_ids, sorted(self.table.volumes))

    async def op_snapshot_delete(self, request: Frame) -> SnapshotDeleteReply:
        checked = requests.snapshot_delete_request(request)
        async with self.mutation:
            try:
                deleted, freed = await self.snapshot_sets.delete(checked["snapshot"],
                                                                 checked.get("force", False))
            finally:
                await self.refresh_browser()
            await self.service.prune()
        return {"deleted": deleted, "freed": freed}

    async def refresh_browser(self) -> None:
        """Sets came or went: the browser shows them as they are; exposures of gone ones end."""
        await self.browser_link.refresh()
        await self.exposures.forget_gone()


# --- entry point ------------------------------------------------------------------------------------------


def setup_logging(level: str | None = None) -> None:
    """The daemon logs at `level` (a `logsetup.LEVELS` name), and so do the children it starts."""
    if level is not None:
        os.environ[logsetup.LEVEL_ENV] = level
    logsetup.configure("shadowfs-daemon")


def open_listener(path: str) -> socket.socket:
    """Bind the CLI socket at `path` (mode 0660); any old socket there is stale (we hold the lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o660)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def max_snapshots_setting(arg: int | None) -> int:
    """The cap of snapshots per volume: the option, else $SHADOWFS_MAX_SNAPSHOTS_PER_VOLUME, else 512."""
    value: int | str | None = arg if arg is not None else os.environ.get(protocol.MAX_SNAPSHOTS_ENV)
    if value is None:
        return protocol.DEFAULT_MAX_SNAPSHOTS_PER_VOLUME
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"invalid maximum number of snapshots per volume {value!r} (a positive integer)")
    return number


def run(state_arg: str | None = None, mount_root_arg: str | None = None,
        max_snapshots: int | None = None, log_level: str | None = None) -> int:
    """`shadowfs daemon`: serve until SIGTERM/SIGINT; raises ConfigError for bad state."""
    if os.geteuid() != 0:
        raise ConfigError("shadowfs daemon needs root: it mounts FUSE filesystems and opens the volumes' "
                          "files by handle (CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH); run it as root")
    state_dir = statedir.resolve_state_dir(state_arg)
    mount_root = statedir.resolve_mount_root(mount_root_arg, state_dir)
    cap = max_snapshots_setting(max_snapshots)
    setup_logging(log_level)
    statedir.prepare_state_dir(state_dir)
    with statedir.DaemonLock(state_dir):
        daemon = Daemon(state_dir, mount_root, cap)
        try:
            daemon.prepare()
            sock_path = statedir.socket_path(state_dir)
            listener = open_listener(sock_path)
            try:
                trio.run(_serve, daemon, listener)
            finally:
                listener.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock_path)
        finally:
            daemon.close()
    return 0


async def _serve(daemon: Daemon, listener: socket.socket) -> None:
    await daemon.serve(trio.socket.from_stdlib_socket(listener))
