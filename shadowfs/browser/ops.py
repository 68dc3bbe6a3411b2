"""The read-only snapshot browser: pyfuse3 `Operations` over `snapshot.view`.

One job: show every snapshot set of every volume as one read-only tree
(design §5), translating FUSE requests into `SnapshotView` calls::

    /                                  virtual, mode 0555, owned by root
    /by-time/                          virtual
    /by-time/2026-11-21T20:43:52Z  ->  ../<set id>     (".1", ".2" on equal times)
    /by-volume/<volume>/@GMT-2026.11.21-20.43.52  ->  ../../<set id>/<volume>
    /<set id>/                         virtual, one per snapshot set
    /<set id>/<volume>/...             the volume's tree at the snapshot

Node ids are laid out in `browser.nodes`; the volumes and the sets they
show are kept by `browser.volumes` (`ShownVolumes`), the virtual nodes made of
them by `browser.virtual`. This module only turns kernel requests into calls
on those and on `SnapshotView`, and their results into pyfuse3 replies.

Invariants:
- Nothing is ever written: every mutating handler answers EROFS (`browser.readonly`), open allows
  O_RDONLY only, and the mount itself is "ro,nosuid,nodev".
- The snapshot records are read from the diff areas on every lookup, getattr
  and opendir of the virtual nodes that reaches the browser
  (`ShownVolumes.snapshot_sets`). Virtual entries and attributes are cached
  by the kernel long (`attrs.VIRTUAL_TIMEOUT`) and taken back when sets come
  and go (`refresh`, `browser.kernelcache`): at once when the daemon says so
  (the control channel's ``refresh``), when a set change is seen by opendir
  or getattr (they wait for it), and otherwise within WATCH_SECONDS (`watch`).
  Negative virtual lookups are never cached, so a new set shows at once.
  Snapshot contents are immutable: long timeouts, negative entries cached,
  and ``keep_cache``.
- A lookup in a snapshot directory where a lookup just missed reads the
  directory whole (`browser.dircache`) and answers from memory from then on.
- listxattr and getxattr of a snapshot object are answered from the xattrs
  read with its attributes by the last lookup, getattr or listing
  (`attrs.XattrCache`), with no transaction and no open; only a miss reads
  them again.
- Blocking work (backing-file I/O, LMDB lookups) goes through `_offload`:
  on the trio thread by default, or in up to ``worker_threads`` worker
  threads. Worker threads only get objects prepared on the trio thread (a
  `SnapshotView`; diff areas are opened only there), and every volume they
  use is pinned meanwhile (`BrowserVolume.pin`): `set_volumes` retires a
  volume's environment and descriptors at once but closes them when the last
  pin is gone. An open file has a live descriptor of its own (never one from
  the shared LRU), closed at release once no read uses it. With `no_open`
  (pyfuse3's ``read_inode``), OPEN is checked and then answered ENOSYS: the
  kernel stops sending OPEN and RELEASE, and reads come by inode through the
  shared descriptors (`browser.files`).
- No LMDB transaction is held across an await or shared between threads
  (each read-model call begins and ends its own). Once a handler has awaited,
  the volume it looked up may have been replaced: results it computed are
  still those of the snapshot, and the next request gets ESTALE.
- Reads go through `SnapshotView.read_hinted`: a file whose last read found no
  captured block is read live first and looked up once (one transaction per
  read); the result is handed to pyfuse3 as a bytearray when assembled, never
  copied again.
- A snapshot deleted while browsed answers ESTALE (from `SnapshotView`); its
  set directory disappears from the root at once.
- An object damaged in a snapshot (design §9.3) answers EIO (from
  `SnapshotView`, through `fuse_handler`) to lookup, getattr, readlink,
  xattrs, open (while the kernel still sends OPEN), read and opendir; a
  listing of its directory still names it, with placeholder attributes that
  the kernel may not cache.
- Lookup counts are kept per node id (lookup and every accepted
  `readdir_reply` add one, `forget` subtracts); nothing is cached per node, so
  they serve as a consistency check only.
- Handlers keep pyfuse3's parameter types (`pyfuse3.InodeT` and friends, plain
  ints) and turn an inode number into a `nodes.NodeId` once, on entry; below
  them node ids, sequences and backing inodes are `NodeId`, `Seq` and
  `BackingIno`, so that one is never passed for another.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pyfuse3
import trio

from shadowfs.browser import files
from shadowfs.browser.attrs import XattrCache, negative_entry, snapshot_attrs, unreadable_attrs
from shadowfs.browser.dircache import MAX_DIR_ENTRIES, DirCache, Listing
from shadowfs.browser.kernelcache import KernelCache, damaged_nodes
from shadowfs.browser.nodes import ROOT_NODE, NodeId, is_snapshot_node, snapshot_node, split_snapshot_node
from shadowfs.browser.readonly import ReadOnlyOperations
from shadowfs.browser.virtual import VirtualTree
from shadowfs.browser.volumes import BrowserVolume, ShownVolumes, SnapshotSet
from shadowfs.diffarea.schema import BackingIno, Seq
from shadowfs.fuse_adapter import fuse_handler
from shadowfs.snapshot.view import SnapshotView

log = logging.getLogger(__name__)

FSNAME = "shadowfs-snapshots"
assert ROOT_NODE == pyfuse3.ROOT_INODE  # nodes.py does without pyfuse3; the numbers must agree

WATCH_SECONDS = 1.0  # how often `watch` looks for set changes nobody told the browser of
MAX_WORKER_THREADS = 64
READDIR_BATCH = 64  # entries whose attributes one worker call computes (a readdir takes ~25)

R = TypeVar("R")
Known = tuple[pyfuse3.EntryAttributes, dict[bytes, bytes]]  # a snapshot object's attributes and xattrs


@dataclass
class DirHandle:
    """An open directory: its entries (name, node id), listed once at opendir, and the
    attributes of a window of them, computed READDIR_BATCH at a time by one `_offload`
    call (the kernel takes a few dozen per readdir; the window bounds memory)."""

    entries: list[tuple[bytes, NodeId]]
    node: NodeId | None = None  # the directory (its virtual entries are noted as they are replied)
    window_start: int = 0
    window: list[pyfuse3.EntryAttributes | None] = field(default_factory=list)


# ---- the filesystem -----------------------------------------------------------------------------


class BrowserOperations(ReadOnlyOperations):
    """pyfuse3 handlers of the snapshot browser; `set_volumes` says which volumes to show."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True

    def __init__(self, worker_threads: int = 0, *, no_open: bool = False) -> None:
        """`worker_threads`: how many blocking calls may run in worker threads at once
        (0: every handler does its I/O on the trio thread; see `_offload`). `no_open`: answer
        OPEN with ENOSYS after its checks, so that reads come by inode (needs `read_inode`,
        pyfuse3 patch 0004: `fuse_adapter.binding().read_inode`)."""
        super().__init__()
        if not 0 <= worker_threads <= MAX_WORKER_THREADS:
            raise ValueError(f"worker_threads must be in 0..{MAX_WORKER_THREADS}")
        self._threads = worker_threads
        self._shown = ShownVolumes()
        # one total, not a count per node: the kernel may know millions of nodes, and node
        # ids carry everything the browser needs, so per-node counts would only cost memory
        self._lookups = 0
        self._handles = itertools.count(1)
        self._files: dict[int, files.OpenFile] = {}
        self._no_open = no_open  # answer OPEN with ENOSYS and serve reads by inode
        self._by_inode = files.InodeFiles()
        self._opens = 0  # OPEN requests answered
        self._dirs: dict[int, DirHandle] = {}
        self._limiter: trio.CapacityLimiter | None = None
        self._virtual = VirtualTree(self._shown, time.time_ns())
        self._kcache = KernelCache()
        self._xattr_cache = XattrCache()
        self._dir_cache = DirCache()
        self._checked_sets: dict[str, SnapshotSet] | None = None  # the sets `refresh` last acted on
        self._refreshing = trio.Lock()
        self._wake_watch = trio.Event()

    # ---- volumes -------------------------------------------------------------------------------

    def set_volumes(self, volumes: Sequence[tuple[str, int, str, int]]) -> None:
        """Show exactly these volumes: (name, index, diff area path, backing root fd).

        Takes ownership of the descriptors, also when it raises (ValueError for
        a bad list; the volumes shown then stay as they were); see `ShownVolumes.replace`.
        """
        self._shown.replace(volumes)

    def opens(self) -> int:
        """How many OPEN requests were answered (for status and tests: with `no_open`, the
        kernel stops sending them after the first answered ENOSYS)."""
        return self._opens

    def known_nodes(self) -> int:
        """How many lookups the kernel holds in all, not yet forgotten (for status and tests)."""
        return self._lookups

    def volumes(self) -> list[BrowserVolume]:
        return self._shown.volumes()

    def close(self) -> None:
        self._shown.close()
        for handle in self._files.values():
            handle.released = True
            handle.close_when_idle()
        self._files.clear()
        self._dirs.clear()
        self._xattr_cache.clear()
        self._dir_cache.clear()

    def snapshot_sets(self) -> dict[str, SnapshotSet]:
        """Every set, read now from the diff areas (`ShownVolumes.snapshot_sets`); a change
        since the last `refresh` wakes `watch`."""
        sets = self._shown.snapshot_sets()
        if sets is not self._checked_sets:
            self._wake_watch.set()
        return sets

    # ---- the kernel's cache of the virtual tree ------------------------------------------------

    def invalidations(self) -> int:
        """How many entries and inodes the kernel was told to forget so far (status and tests)."""
        return self._kcache.invalidations

    async def refresh(self) -> None:
        """Take back from the kernel whatever it caches of the virtual tree that the sets read
        now make untrue, and forget the xattrs of deleted snapshots; returns once the kernel
        has done so. Never call it from a handler the kernel runs under a directory lock
        (lookup, readdir): see `browser.kernelcache`."""
        async with self._refreshing:
            sets = self.snapshot_sets()
            if sets is self._checked_sets:
                return
            self._checked_sets = sets
            alive = {(volume.index, record.seq) for entry in sets.values()
                     for volume, record in entry.members.values()}
            self._xattr_cache.forget_snapshots(lambda index, seq: (index, seq) in alive)
            self._dir_cache.forget_snapshots(lambda index, seq: (index, seq) in alive)
            truth = self._virtual.entries(sets)

            def attrs_now(node: NodeId) -> pyfuse3.EntryAttributes | None:
                try:
                    return self._virtual_attrs(node, sets)
                except OSError:
                    return None

            entries, inodes = self._kcache.stale(lambda parent, name: truth.get((parent, name)), attrs_now)
            await self._kcache.invalidate(entries, inodes)

    async def forget_damaged(self, volume: str, inos: list[int]) -> None:
        """Objects of `volume` were marked damaged (design §9.3): drop what this process and the
        kernel cache of them, so the next read asks and fails with EIO. Not from a handler."""
        sets = self.snapshot_sets()
        index = next((entry.members[volume][0].index for entry in sets.values()
                      if volume in entry.members), 0)
        self._xattr_cache.forget_snapshots(lambda i, _seq: i != index)
        self._dir_cache.forget_snapshots(lambda i, _seq: i != index)
        await self._kcache.invalidate([], damaged_nodes(sets, volume, inos), data=True)

    async def _refresh_if_changed(self) -> None:
        if self.snapshot_sets() is not self._checked_sets:
            await self.refresh()

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Forever: `refresh` every `interval` seconds, or at once when a handler saw the sets
        change (a snapshot deleted or made without the daemon telling the browser)."""
        while True:
            with trio.move_on_after(interval):
                await self._wake_watch.wait()
            self._wake_watch = trio.Event()
            await self.refresh()

    # ---- attributes ----------------------------------------------------------------------------

    def _resolve(self, node: NodeId) -> tuple[BrowserVolume, Seq, BackingIno]:
        return self._shown.resolve(node)

    def _prepare(self, node: NodeId) -> tuple[BrowserVolume, SnapshotView, BackingIno]:
        """(volume, view, backing ino) of a snapshot node, made on the trio thread (which
        alone opens diff areas) for a worker thread to use."""
        volume, seq, ino = self._resolve(node)
        return volume, volume.view(seq), ino

    def _virtual_attrs(self, node: NodeId, sets: dict[str, SnapshotSet] | None = None
                       ) -> pyfuse3.EntryAttributes:
        """Attributes of a virtual node (ESTALE when its set or volume no longer exists).

        `sets` saves re-reading the snapshot records when many virtual nodes are asked at once.
        """
        return self._virtual.attrs(node, self.snapshot_sets() if sets is None else sets)

    @staticmethod
    def _entry_of(view: SnapshotView, node: NodeId, ino: BackingIno) -> Known:
        """Attributes and xattrs of snapshot object `ino` under node id `node` (blocking: `_offload`)."""
        record = view.attr(ino, with_xattrs=True)
        return snapshot_attrs(node, record), record.xattrs

    def _known(self, known: Known) -> pyfuse3.EntryAttributes:
        """The attributes of a snapshot object just read; its xattrs kept for listxattr/getxattr."""
        attrs, xattrs = known
        if attrs.st_ino:
            self._xattr_cache.put(NodeId(attrs.st_ino), xattrs)
        return attrs

    def _noted(self, attrs: pyfuse3.EntryAttributes, parent: NodeId | None = None,
               name: bytes = b"") -> pyfuse3.EntryAttributes:
        """`attrs` about to be replied: noted for `refresh` where the kernel caches a virtual
        entry (`parent` virtual) or virtual attributes."""
        node = NodeId(attrs.st_ino)
        if parent is not None and not is_snapshot_node(parent):
            self._kcache.note_entry(parent, name, node)
        if node and not is_snapshot_node(node):
            self._kcache.note_attrs(attrs)
        return attrs

    async def _attrs(self, node: NodeId) -> pyfuse3.EntryAttributes:
        """Attributes of any node (ENOENT/ESTALE when it no longer exists)."""
        if not is_snapshot_node(node):
            await self._refresh_if_changed()
            return self._noted(self._virtual_attrs(node))
        volume, view, ino = self._prepare(node)
        return self._known(await self._offload([volume], functools.partial(self._entry_of, view, node, ino)))

    def _counted(self, attrs: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        node = attrs.st_ino
        if node:
            self._lookups += 1
        return attrs

    # ---- worker threads ------------------------------------------------------------------------

    async def _offload(self, volumes: Sequence[BrowserVolume], work: Callable[[], R]) -> R:
        """Run blocking `work` (disk I/O, LMDB lookups) of a handler.

        With worker threads configured, in one of them, so that several kernel
        requests are served at once; `volumes` stay pinned (not closed) meanwhile.
        The thread is never abandoned: a cancelled handler waits for it, so the
        pins always outlive the work. Its exceptions reach the caller as they are
        (`fuse_handler` maps them to FUSEError). Without (the default), on the trio
        thread right away: measured on a 2-core host with a fast disk, the hop to a
        thread and back costs more than the overlap gains (sequential reads reach
        ~1.3x the throughput inline), so threads pay only where the disk is slow
        and cores are many.
        """
        if self._threads == 0:
            return work()
        for volume in volumes:
            volume.pin()
        try:
            return await trio.to_thread.run_sync(work, limiter=self._thread_limiter())
        finally:
            for volume in volumes:
                volume.unpin()

    def _thread_limiter(self) -> trio.CapacityLimiter:
        if self._limiter is None:  # made lazily: a limiter belongs to a running trio loop
            self._limiter = trio.CapacityLimiter(self._threads)
        return self._limiter

    # ---- directory contents --------------------------------------------------------------------

    @staticmethod
    def _snapshot_child(index: int, view: SnapshotView, seq: Seq, dir_ino: BackingIno,
                        name: bytes) -> Known:
        """The entry `name` of a snapshot directory, negative if none (blocking: `_offload`)."""
        try:
            child = view.lookup(dir_ino, name).ino
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return negative_entry(), {}
        return BrowserOperations._entry_of(view, snapshot_node(index, seq, child), child)

    async def _child(self, parent: NodeId, name: bytes) -> pyfuse3.EntryAttributes:
        if is_snapshot_node(parent):
            volume, seq, ino = self._resolve(parent)
            view = volume.view(seq)
            listing = self._dir_cache.get(parent)
            if listing is None and self._dir_cache.wants(parent):
                listing = await self._read_dir(volume, view, parent)
            if listing is not None:
                return self._from_listing(listing, name)
            return self._known(await self._offload([volume], functools.partial(
                self._snapshot_child, volume.index, view, seq, ino, name)))
        sets = self.snapshot_sets()
        node = self._virtual.child(parent, name, sets)  # ENOENT is not cached by the kernel
        if not is_snapshot_node(node):
            return self._noted(self._virtual.attrs(node, sets), parent, name)
        # a volume's name in a set directory: the root of its snapshot
        volume, seq, root_ino = self._resolve(node)
        view = volume.view(seq)
        self._kcache.note_entry(parent, name, node)  # before the await: a refresh meanwhile sees it
        return self._known(await self._offload([volume], functools.partial(self._entry_of, view, node,
                                                                           root_ino)))

    async def _read_dir(self, volume: BrowserVolume, view: SnapshotView, node: NodeId) -> Listing | None:
        """Snapshot directory `node` read whole for `browser.dircache` (None: too big, or an
        error that the one-by-one lookup reports)."""
        _, seq, ino = split_snapshot_node(node)

        def read() -> Listing | None:
            entries = view.listdir_attrs(ino, MAX_DIR_ENTRIES)
            return None if entries is None else {
                name: (snapshot_node(volume.index, seq, child), attrs) for name, child, attrs in entries}

        try:
            listing = await self._offload([volume], read)
        except OSError:
            return None
        if listing is not None:
            self._dir_cache.put(node, listing)
        return listing

    def _from_listing(self, listing: Listing, name: bytes) -> pyfuse3.EntryAttributes:
        """The entry `name` of a snapshot directory read whole: what `_snapshot_child` says."""
        found = listing.get(name)
        if found is None:
            return negative_entry()
        node, record = found
        if isinstance(record, OSError):
            raise OSError(record.errno, record.strerror)
        return self._known((snapshot_attrs(node, record), record.xattrs))

    async def _listing(self, node: NodeId) -> list[tuple[bytes, NodeId]]:
        """(name, node id) of every entry of directory `node`, computed once per opendir."""
        if is_snapshot_node(node):
            volume, seq, ino = self._resolve(node)
            view = volume.view(seq)

            def snapshot_listing() -> list[tuple[bytes, NodeId]]:
                return [(name, snapshot_node(volume.index, seq, record.ino))
                        for name, record in view.listdir(ino)]

            return await self._offload([volume], snapshot_listing)
        return self._virtual.listing(node, self.snapshot_sets())

    async def _fill_window(self, handle: DirHandle, start: int) -> None:
        """Attributes of entries [start, start + READDIR_BATCH) of an open directory, None
        for one that vanished since opendir (a deleted set: skipped, offsets never shift)."""
        batch = handle.entries[start:start + READDIR_BATCH]
        window: list[pyfuse3.EntryAttributes | None] = [None] * len(batch)
        xattrs: list[dict[bytes, bytes] | None] = [None] * len(batch)
        sets = None
        todo: list[tuple[int, SnapshotView, NodeId, BackingIno]] = []
        volumes: dict[int, BrowserVolume] = {}
        for position, (_, node) in enumerate(batch):
            if is_snapshot_node(node):
                volume, view, ino = self._prepare(node)
                volumes[volume.index] = volume
                todo.append((position, view, node, ino))
                continue
            if sets is None:
                sets = self.snapshot_sets()
            try:
                window[position] = self._virtual_attrs(node, sets)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ESTALE):
                    raise

        def snapshot_entries() -> None:
            for position, view, node, ino in todo:
                try:
                    window[position], xattrs[position] = self._entry_of(view, node, ino)
                except OSError as exc:
                    if exc.errno == errno.EIO:  # damaged (design §9.3): listed, every look at it fails
                        window[position] = unreadable_attrs(node)
                    elif exc.errno != errno.ENOENT:
                        raise

        if todo:
            await self._offload(list(volumes.values()), snapshot_entries)
            for attrs, known in zip(window, xattrs, strict=True):
                if attrs is not None and known is not None:
                    self._xattr_cache.put(NodeId(attrs.st_ino), known)
        handle.window_start, handle.window = start, window

    # ---- handlers: lookups and attributes ------------------------------------------------------

    @fuse_handler
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        return self._counted(await self._child(NodeId(parent_inode), name))

    @fuse_handler
    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for node, count in inode_list:
            self._lookups -= count
            if self._lookups < 0:
                log.error("lookup count went negative (%d) at the forget of node %#x", self._lookups, node)
                self._lookups = 0

    @fuse_handler
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._attrs(NodeId(inode))

    @fuse_handler
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        node = NodeId(inode)
        if is_snapshot_node(node):
            volume, view, ino = self._prepare(node)
            return await self._offload([volume], functools.partial(view.readlink, ino))
        return self._virtual.link_target(node, self.snapshot_sets())

    async def _xattrs(self, node: NodeId) -> dict[bytes, bytes]:
        """The snapshot object's xattrs: as read with its attributes, or read now."""
        self._resolve(node)  # ESTALE once its volume is gone
        known = self._xattr_cache.get(node)
        if known is not None:
            return known
        volume, view, ino = self._prepare(node)
        known = await self._offload([volume], functools.partial(view.xattrs, ino))
        self._xattr_cache.put(node, known)
        return known

    @fuse_handler
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = NodeId(inode)
        if not is_snapshot_node(node):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = (await self._xattrs(node)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_handler
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = NodeId(inode)
        if not is_snapshot_node(node):
            return []
        return sorted(await self._xattrs(node))

    @fuse_handler
    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks modes and ACLs itself

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        volumes = self.volumes()
        if volumes:
            st = os.fstatvfs(volumes[0].root_fd)
            data.f_bsize, data.f_frsize = st.f_bsize, st.f_frsize
            data.f_blocks, data.f_bfree, data.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
            data.f_files, data.f_ffree, data.f_favail = st.f_files, st.f_ffree, st.f_favail
        else:
            data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # ---- handlers: files -----------------------------------------------------------------------

    @fuse_handler
    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = NodeId(inode)
        if not is_snapshot_node(node):
            raise OSError(errno.EISDIR, "virtual directory")
        self._opens += 1
        volume, seq, ino = self._resolve(node)
        view = volume.view(seq)
        size, fd = await self._offload([volume], functools.partial(files.open_file, view, ino))
        if self._no_open:  # checked as any open; from now on the kernel reads by inode (`read_inode`)
            if fd is not None:
                os.close(fd)
            self._by_inode.put(node, files.Known(volume, size))
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = next(self._handles)
        self._files[fh] = files.OpenFile(volume, seq, ino, size, fd)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    # pyfuse3's stub says read returns bytes, but pyfuse3 replies with any contiguous buffer
    # (PyObject_GetBuffer in fuse_read_async): an assembled bytearray goes out uncopied.
    @fuse_handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int,  # type: ignore[override]
                   size: int) -> bytes | bytearray:
        handle = self._files.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle")
        view = handle.volume.view(handle.seq)  # ESTALE once the volume is gone
        handle.readers += 1
        try:
            data, handle.captured = await self._offload([handle.volume], functools.partial(
                view.read_hinted, handle.ino, off, size, handle.size, handle.fd,
                live_first=not handle.captured))
            return data
        finally:
            handle.readers -= 1
            handle.close_when_idle()

    @fuse_handler
    async def read_inode(self, inode: pyfuse3.InodeT, fh: pyfuse3.FileHandleT,  # type: ignore[override]
                         off: int, size: int) -> bytes | bytearray:
        if fh:  # opened before the kernel stopped sending OPEN
            return await self.read(fh, off, size)
        node = NodeId(inode)
        volume, seq, ino = self._resolve(node)
        view = volume.view(seq)  # ESTALE once the volume is gone
        data, known = await self._offload([volume], functools.partial(
            files.read_by_inode, view, volume, ino, off, size, self._by_inode.get(node, volume)))
        self._by_inode.put(node, known)
        return data

    @fuse_handler
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.released = True
            handle.close_when_idle()

    # ---- handlers: directories -----------------------------------------------------------------

    @fuse_handler
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = NodeId(inode)
        if not is_snapshot_node(node):
            await self._refresh_if_changed()
        entries = await self._listing(node)
        fh = next(self._handles)
        self._dirs[fh] = DirHandle(entries, node)
        return fh

    @fuse_handler
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown directory handle")
        for position in range(start_id, len(handle.entries)):
            offset = position - handle.window_start
            if not 0 <= offset < len(handle.window):
                await self._fill_window(handle, position)
                offset = 0
            attrs = handle.window[offset]
            if attrs is None:
                continue  # vanished since opendir (a deleted set): skip, never shift offsets
            name = handle.entries[position][0]
            if not pyfuse3.readdir_reply(token, name, self._noted(attrs, handle.node, name), position + 1):
                break
            self._counted(attrs)

    @fuse_handler
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)
