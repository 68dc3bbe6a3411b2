"""The live mount: a pass-through FUSE filesystem that captures pre-images first.

One job: serve a volume's backing directory through pyfuse3, exactly like the
backing filesystem would, except that every change first stores the
pre-images DESIGN section 3 asks for (through `capture.CaptureEngine`, on the
group-commit thread of `committer.Committer`), and that changes wait while a
snapshot instant is being held (`HoldGate`, DESIGN section 4).

Model: FUSE inode numbers are backing inode numbers, except that the backing
root is `pyfuse3.ROOT_INODE`. Objects are reached by inode number, never by
path (renames behind a path cannot confuse anything): a bounded cache keeps
O_PATH|O_NOFOLLOW descriptors of recently used inodes and any other inode is
reopened by number (`osutil.open_by_ino`), so memory and open descriptors do
not grow with the number of files the kernel knows, and lookup counts need no
bookkeeping (the kernel drops an unlinked inode as soon as it is unused, so an
inode number it still refers to names the same object). The kernel checks permissions
(`default_permissions`, POSIX ACLs enabled); the process runs as root and gives
new objects to the caller.

Invariants:
- Capture happens before the change: a handler awaits the commit of every
  pre-image it needs, and then applies its change synchronously on the trio
  thread, with no `await` between its last check and the change. Handlers run
  on one thread, so the check-and-change of one handler is atomic with respect
  to every other handler (s3ql's rule: a new `await` between two adjacent
  steps breaks this).
- `newest` is read inside the gate; with no snapshot nothing is captured.
- Namespace changes re-stat their names after capturing and capture again if
  the name now names another object, so the pre-images always belong to the
  objects that the change touches.
- The last name of an object that existed at the newest snapshot is never
  removed: the object is first hard-linked (a directory: renamed) into
  `<backing>/.shadowfs/graveyard/<ino>` and its death is recorded.
- `<backing>/.shadowfs` does not exist in the mount: lookups fail with
  ENOENT, listings omit it, the root's link count leaves it out, nothing can
  be created or renamed onto it.
- Only `FUSEError` leaves a handler (`fuseutil.fuse_handler`).
- The kernel may cache names and attributes for long (`IN_PLACE_CACHE_TIMEOUT`)
  only when the mount is in place: then every change reaches the kernel
  first, and it invalidates what the change makes stale itself.
- A file opened write-only is served with direct I/O (`_file_info`); every
  other open is cached. No writeback cache: a write reaches the handler
  before write() returns, so the hold gate sees every change.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import lmdb
import pyfuse3
import trio

from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import CaptureEngine, block_span, blocks_below
from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.fuse_adapter import fuse_handler
from shadowfs.linux.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, open_by_ino, proc_path, renameat2

log = logging.getLogger(__name__)

# How long the kernel may trust a name or attributes it got from the mount without asking again.
# Every change to the volume goes through the mount's handlers, and the kernel invalidates what a
# change it passed on makes stale, so only a change behind the kernel's back could leave it stale.
# Mounted in place nothing can make one (the backing tree is hidden under the mount and the mount
# process itself changes only the hidden .shadowfs), so the kernel may trust its caches for long:
# that saves a LOOKUP or GETATTR per name touched again (stat, unlink after create...). A separate
# mount leaves the backing tree reachable beside it, so its caches expire quickly.
CACHE_TIMEOUT = 1.0
IN_PLACE_CACHE_TIMEOUT = 60.0
CAPTURE_AHEAD_MIN = 1 << 20
CAPTURE_AHEAD_MAX = 16 << 20
CACHE_LIMIT = 1 << 17  # (ino, block) pairs remembered as captured before the cache is dropped
PATH_FD_CAPACITY = 4096  # O_PATH descriptors kept open (the rest are reopened by inode number)

_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Flags that make no sense on a reopen through /proc, or that the kernel handles itself:
# O_APPEND is dropped so that the offset the kernel sends is the offset written (and captured).
_OPEN_DROP = (os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_APPEND | os.O_DIRECT
              | os.O_TRUNC)
_AT_EMPTY_PATH = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


def _link_fd(fd: int, new_dir_fd: int, new_name: bytes) -> None:
    """linkat(fd, "", new_dir_fd, new_name, AT_EMPTY_PATH): link the object behind an O_PATH fd.

    Works for symlinks too (the /proc magic-link route does not); needs
    CAP_DAC_READ_SEARCH, which the mount process has as root.
    """
    if _libc.linkat(fd, b"", new_dir_fd, new_name, _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


async def run_job(committer: Committer, job: Callable[[lmdb.Transaction], Any]) -> Any:
    """Run `job` on the committer thread and wait (shielded) until its commit is durable."""
    token = trio.lowlevel.current_trio_token()
    done_evt = trio.Event()
    box: list[Any] = []

    def done(result: Any, error: BaseException | None) -> None:
        box[:] = [result, error]
        token.run_sync_soon(done_evt.set)

    committer.submit(job, done)
    with trio.CancelScope(shield=True):
        await done_evt.wait()
    if box[1] is not None:
        raise box[1]
    return box[0]


class HoldGate:
    """Every changing request passes through here; `hold` closes it and drains them.

    Changes run concurrently while the gate is open; in-flight tracking is a
    counter and an event. A closed gate parks new changes until `release`.
    The gate measures how long it stays closed (`release` returns it): that
    is how long changes on the volume were held for a snapshot.
    """

    def __init__(self) -> None:
        self._held = False
        self._opened = trio.Event()
        self._opened.set()
        self._in_flight = 0
        self._entered = 0
        self._closed_at = 0.0
        self._drained: trio.Event | None = None
        self.on_idle: Callable[[], None] | None = None  # runs whenever no change is in flight

    @property
    def held(self) -> bool:
        return self._held

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def entered(self) -> int:
        """How many changes have passed the gate so far (a change counter, never reset)."""
        return self._entered

    @asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        while self._held:
            await self._opened.wait()
        self._in_flight += 1
        self._entered += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                if self._drained is not None:
                    self._drained.set()
                if self.on_idle is not None:
                    self.on_idle()

    async def hold(self, timeout: float) -> None:
        """Close the gate and wait until no change is in flight; TooSlowError (gate reopened) if slow."""
        if self._held:
            raise RuntimeError("the gate is already held")
        self._held = True
        self._closed_at = time.perf_counter()
        self._opened = trio.Event()
        if self._in_flight == 0:
            return
        self._drained = trio.Event()
        try:
            with trio.fail_after(timeout):
                await self._drained.wait()
        except BaseException:
            self.release()
            raise
        finally:
            self._drained = None

    def release(self) -> float | None:
        """Open the gate; returns how many seconds it was closed (None if it was open)."""
        if not self._held:
            return None
        self._held = False
        self._opened.set()
        return time.perf_counter() - self._closed_at


class CaptureCache:
    """What is known to need no capture under snapshot `seq`: born objects, captured blocks,
    and per file the number of blocks that held data at `seq` (blocks from there on, appends
    included, never need a pre-image), so that a write it covers asks the diff area nothing.

    Everything here stays true while `seq` is the newest snapshot (pre-images at `seq` are
    written once and never change); `reset` drops it when the newest snapshot changes.
    """

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self.seq: int | None = None
        self.born: set[int] = set()
        self.blocks: dict[int, set[int]] = {}
        self.data_blocks: dict[int, int] = {}
        self._count = 0

    def reset(self, seq: int | None) -> None:
        self.seq = seq
        self.born.clear()
        self.blocks.clear()
        self.data_blocks.clear()
        self._count = 0

    def is_born(self, seq: int, ino: int) -> bool:
        """Whether `ino` is known to be born after snapshot `seq` (False: unknown)."""
        return seq == self.seq and ino in self.born

    def covers(self, seq: int, ino: int, blocks: range) -> bool:
        if seq != self.seq:
            return False
        if ino in self.born:
            return True
        limit = self.data_blocks.get(ino)
        if limit is not None and blocks.start >= limit:
            return True
        known = self.blocks.get(ino)
        return known is not None and all(block in known for block in blocks
                                         if limit is None or block < limit)

    def add_data_blocks(self, seq: int, ino: int, count: int) -> None:
        """`ino` held data in its first `count` blocks at `seq` (from its attribute pre-image)."""
        if seq == self.seq:
            self._grow(1)
            self.data_blocks[ino] = count

    def add_born(self, seq: int, ino: int) -> None:
        if seq == self.seq:
            self._grow(1)
            self.born.add(ino)

    def add_blocks(self, seq: int, ino: int, blocks: range) -> None:
        if seq == self.seq:
            self._grow(len(blocks))
            self.blocks.setdefault(ino, set()).update(blocks)

    def _grow(self, count: int) -> None:
        self._count += count
        if self._count > self.limit:
            self.reset(self.seq)
            self._count = count


class PathFds:
    """O_PATH descriptors of backing objects by inode number, least recently used out.

    The kernel may know millions of inodes; keeping a descriptor for each
    would run into the open-file limit and grow memory with the tree. Any
    inode can be reopened by number (osutil.open_by_ino), so only a bounded
    cache is kept and lookup counts need no bookkeeping. A handler may hold a
    descriptor across an await (while its capture commits), so an evicted
    descriptor is only retired, and closed by `reap` once no changing request
    is in flight.
    """

    def __init__(self, root_fd: int, root_ino: int, in_use: Callable[[], bool],
                 capacity: int = PATH_FD_CAPACITY) -> None:
        self.root_fd = root_fd
        self._in_use = in_use  # whether a handler may hold a descriptor across an await
        self.root_ino = root_ino
        self.capacity = capacity
        self.root = os.open(".", _O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=root_fd)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._retired: list[int] = []

    def get(self, ino: int) -> int | None:
        if ino == self.root_ino:
            return self.root
        fd = self._fds.get(ino)
        if fd is not None:
            self._fds.move_to_end(ino)
        return fd

    def open(self, ino: int) -> int:
        fd = open_by_ino(self.root_fd, ino, _O_PATH_FLAGS)
        self.put(ino, fd)
        return fd

    def put(self, ino: int, fd: int) -> None:
        """Keep `fd` (an O_PATH descriptor of `ino`); takes ownership."""
        if ino == self.root_ino:
            os.close(fd)
            return
        old = self._fds.pop(ino, None)
        if old is not None:
            self._retire(old)
        self._fds[ino] = fd
        while len(self._fds) > self.capacity:
            self._retire(self._fds.popitem(last=False)[1])

    def _retire(self, fd: int) -> None:
        if self._in_use():
            self._retired.append(fd)
        else:
            os.close(fd)

    def reap(self) -> None:
        """Close retired descriptors; only when no handler can still be using one."""
        retired, self._retired = self._retired, []
        for fd in retired:
            os.close(fd)

    def close(self) -> None:
        self.reap()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.root)


@dataclass
class _File:
    fd: int
    ino: int
    next_offset: int = -1  # where a sequential writer's next write would start
    ahead: int = 0  # bytes captured beyond a sequential write (grows, capped at CAPTURE_AHEAD_MAX)


@dataclass
class _Dir:
    fd: int  # O_RDONLY | O_DIRECTORY
    ino: int
    names: list[bytes] = field(default_factory=list)


class LiveOperations(pyfuse3.Operations):
    """pyfuse3 handlers of one volume's live mount (see the module docstring)."""

    enable_acl = True
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, root_fd: int, graveyard_fd: int, area: DiffArea, committer: Committer,
                 newest: int | None = None, *, cache_timeout: float = CACHE_TIMEOUT) -> None:
        super().__init__()
        self.cache_timeout = cache_timeout  # entry and attribute timeout of every reply
        self.root_fd = root_fd
        self.graveyard_fd = graveyard_fd
        self.area = area
        self.committer = committer
        self.engine = CaptureEngine(area, root_fd)
        self.gate = HoldGate()
        self.cache = CaptureCache()
        root = os.fstat(root_fd)
        self.root_ino = root.st_ino
        self.root_dev = root.st_dev
        self._hidden_inos = {os.stat(schema.HIDDEN_DIR, dir_fd=root_fd, follow_symlinks=False).st_ino,
                             os.fstat(graveyard_fd).st_ino}
        self._paths = PathFds(root_fd, self.root_ino, lambda: self.gate.in_flight > 0)
        self.gate.on_idle = self._paths.reap
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, _Dir] = {}
        self._next_fh = 1
        self.newest: int | None = None
        self.set_newest(newest)

    # ---- state shared with the mount process ----------------------------

    def set_newest(self, seq: int | None) -> None:
        """The newest snapshot changed (commit or delete): capture against `seq` from now on."""
        if seq != self.newest or seq != self.cache.seq:
            self.newest = seq
            self.cache.reset(seq)

    def close(self) -> None:
        """Close every descriptor the handlers hold (after the FUSE loop ended)."""
        for handle in [*self._files.values(), *self._dirs.values()]:
            os.close(handle.fd)
        self._paths.close()
        self._files.clear()
        self._dirs.clear()

    # ---- inode table -----------------------------------------------------

    def _ino(self, inode: int) -> int:
        return self.root_ino if inode == pyfuse3.ROOT_INODE else inode

    def _inode(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == self.root_ino else ino

    def _fd(self, ino: int) -> int:
        """A descriptor of `ino`: cached, reopened by number, or an open file's own."""
        fd = self._paths.get(ino)
        if fd is not None:
            return fd
        try:
            return self._paths.open(ino)
        except OSError as exc:
            # an open file with no name left cannot be reopened by number
            for handle in self._files.values():
                if handle.ino == ino:
                    return handle.fd
            raise pyfuse3.FUSEError(exc.errno or errno.ESTALE) from None

    def _hidden(self, dir_ino: int, name: bytes) -> bool:
        return dir_ino == self.root_ino and name == schema.HIDDEN_DIR

    def _open_entry(self, dir_fd: int, name: bytes) -> tuple[int, os.stat_result]:
        """An O_PATH descriptor and the stat of `name` in `dir_fd` (not yet counted)."""
        fd = os.open(name, _O_PATH_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if st.st_ino in self._hidden_inos:
                raise OSError(errno.ENOENT, "no such entry")
            if st.st_dev != self.root_dev:
                raise OSError(errno.EXDEV, "another filesystem is mounted inside the volume")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _remember(self, fd: int, st: os.stat_result) -> None:
        """Keep `fd` as the cached descriptor of `st.st_ino`; takes ownership."""
        self._paths.put(st.st_ino, fd)

    def _entry(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self._inode(st.st_ino)
        attr.generation = 0
        attr.entry_timeout = self.cache_timeout
        attr.attr_timeout = self.cache_timeout
        attr.st_mode = st.st_mode
        # The root's link count leaves the hidden .shadowfs subdirectory out (as snapview does).
        attr.st_nlink = st.st_nlink - 1 if st.st_ino == self.root_ino else st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # ---- capture helpers -------------------------------------------------

    def _status(self, n: int, attrs: Iterable[int],
                entries: Iterable[tuple[int, bytes]]) -> tuple[bool, dict[int, bool]]:
        """(every listed object has its pre-image at >= n, born-after-n flag of each attrs ino).

        Objects known to be born after `n` (the capture cache) need nothing and no lookup:
        creating and removing names in a directory made since the newest snapshot costs
        no diff-area transaction at all.
        """
        attrs = list(attrs)
        entries = list(entries)
        if all(self.cache.is_born(n, ino) for ino in attrs) and all(
                self.cache.is_born(n, dir_ino) for dir_ino, _name in entries):
            return True, dict.fromkeys(attrs, True)
        done = True
        born: dict[int, bool] = {}
        with self.area.read() as txn:
            for ino in attrs:
                record = self._attr_record(txn, n, ino)
                if record is None:
                    done = False
                born[ino] = record is not None and not record.exists
            for dir_ino, name in entries:
                record = self._attr_record(txn, n, dir_ino)
                if record is None or (record.exists
                                      and self.area.dirent_at(txn, dir_ino, name, n) is None):
                    done = False
        return done, born

    def _attr_record(self, txn: lmdb.Transaction, n: int, ino: int) -> schema.AttrRecord | None:
        """The attribute pre-image of `ino` at >= n; one saying "born after n" is remembered."""
        record = self.area.attr_at(txn, ino, n)
        if record is not None and not record.exists:
            self.cache.add_born(n, ino)
        return record

    def _capture_job(self, n: int, attrs: Sequence[int],
                     entries: Sequence[tuple[int, bytes]]) -> Callable[[lmdb.Transaction], None]:
        def job(txn: lmdb.Transaction) -> None:
            for dir_ino, name in entries:
                self.engine.for_entry_change(txn, n, dir_ino, name)
            for ino in attrs:
                self.engine.for_attr_change(txn, n, ino)
        return job

    async def _capture(self, n: int | None, attrs: Sequence[int] = (),
                       entries: Sequence[tuple[int, bytes]] = ()) -> None:
        """Capture the attributes of `attrs` and the entries `entries` under `n` if needed."""
        if n is None:
            return
        if not self._status(n, attrs, entries)[0]:
            await run_job(self.committer, self._capture_job(n, attrs, entries))

    async def _capture_truncate(self, n: int | None, ino: int, size: int) -> None:
        if n is None or (ino in self.cache.born and self.cache.seq == n):
            return
        with self.area.read() as txn:
            record = self.area.attr_at(txn, ino, n)
            if record is not None and (not record.exists or size >= record.size or not
                                       self.engine.write_needs_capture(txn, n, ino, size,
                                                                       record.size - size)):
                return
        await run_job(self.committer, lambda txn: self.engine.for_truncate(txn, n, ino, size))

    def _write_needs_capture(self, n: int, handle: _File, offset: int, length: int) -> bool:
        blocks = block_span(offset, length)
        if self.cache.covers(n, handle.ino, blocks):
            return False
        with self.area.read() as txn:
            record = self._attr_record(txn, n, handle.ino)  # remembers a born file
            if record is not None:
                if not record.exists:
                    return False
                self.cache.add_data_blocks(n, handle.ino, blocks_below(record.size))
            needed = self.engine.write_needs_capture(txn, n, handle.ino, offset, length)
        if not needed:
            self.cache.add_blocks(n, handle.ino, blocks)
            return False
        return self._newest_for(handle.fd) is not None

    def _newest_for(self, fd: int) -> int | None:
        """`newest`, or None when the object behind `fd` has no name left.

        Such an object (open, unlinked) is invisible to every snapshot: anything
        a snapshot can see keeps a name, in the graveyard if need be. Its
        changes need no capture.
        """
        if self.newest is None or os.fstat(fd).st_nlink == 0:
            return None
        return self.newest

    def _note_new(self, n: int | None, ino: int) -> None:
        if n is not None:
            self.cache.add_born(n, ino)
            self.committer.submit(lambda txn: self.engine.note_new_object(txn, n, ino))

    def _note_death(self, n: int, ino: int) -> None:
        self.committer.submit(lambda txn: self.engine.note_death(txn, n, ino))

    def _bury(self, dir_fd: int, name: bytes, st: os.stat_result) -> None:
        """Give the object behind `name` a name in the graveyard before it loses `name`."""
        grave = str(st.st_ino).encode()
        if stat.S_ISDIR(st.st_mode):
            os.rename(name, grave, src_dir_fd=dir_fd, dst_dir_fd=self.graveyard_fd)
            return
        try:
            os.link(name, grave, src_dir_fd=dir_fd, dst_dir_fd=self.graveyard_fd,
                    follow_symlinks=False)
        except FileExistsError:
            pass

    def _unbury(self, dir_fd: int, name: bytes, st: os.stat_result) -> None:
        """Undo `_bury` after the change it prepared failed."""
        grave = str(st.st_ino).encode()
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rename(grave, name, src_dir_fd=self.graveyard_fd, dst_dir_fd=dir_fd)
            else:
                os.unlink(grave, dir_fd=self.graveyard_fd)
        except OSError:
            log.exception("could not undo the graveyard entry of inode %d", st.st_ino)

    @staticmethod
    def _owner(ctx: pyfuse3.RequestContext, parent_fd: int) -> tuple[int, int]:
        """(uid, gid) of a new object made by the caller of `ctx` (setgid parents give their group)."""
        parent = os.fstat(parent_fd)
        return ctx.uid, parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid

    def _special_bits(self, ctx: pyfuse3.RequestContext, mode: int, gid: int) -> int:
        """The set-id bits a new non-directory keeps (chown by root clears them)."""
        bits = mode & (stat.S_ISUID | stat.S_ISGID)
        if bits & stat.S_ISGID and ctx.uid != 0 and gid != ctx.gid:
            if gid not in pyfuse3.get_sup_groups(ctx.pid):
                bits &= ~stat.S_ISGID
        return bits

    def _check_new_name(self, dir_ino: int, name: bytes) -> None:
        if self._hidden(dir_ino, name):
            raise pyfuse3.FUSEError(errno.EPERM)

    async def _make(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext,
                    make: Callable[[int], None], mode: int) -> pyfuse3.EntryAttributes:
        """Shared flow of mknod / mkdir / symlink: capture, make, give to the caller, count."""
        parent = self._ino(parent_inode)
        self._check_new_name(parent, name)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            n = self.newest
            await self._capture(n, entries=[(parent, name)])
            make(parent_fd)
            try:
                uid, gid = self._owner(ctx, parent_fd)
                os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
                fd, st = self._open_entry(parent_fd, name)
            except BaseException:
                self._discard(parent_fd, name, mode)
                raise
            keep = 0 if stat.S_ISDIR(mode) or stat.S_ISLNK(mode) else self._special_bits(ctx, mode, gid)
            if keep:
                os.chmod(proc_path(fd), stat.S_IMODE(st.st_mode) | keep)
                st = os.fstat(fd)
            self._note_new(n, st.st_ino)
        self._remember(fd, st)
        return self._entry(st)

    @staticmethod
    def _discard(parent_fd: int, name: bytes, mode: int) -> None:
        try:
            if stat.S_ISDIR(mode):
                os.rmdir(name, dir_fd=parent_fd)
            else:
                os.unlink(name, dir_fd=parent_fd)
        except OSError:
            log.exception("could not remove half-made %r", name)

    # ---- lookups and attributes -------------------------------------------

    @fuse_handler
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._ino(parent_inode)
        if self._hidden(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name == b".." and parent == self.root_ino:
            name = b"."
        fd, st = self._open_entry(self._fd(parent), name)
        self._remember(fd, st)
        return self._entry(st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to drop: no per-inode state is kept beyond the bounded descriptor cache."""

    @fuse_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(os.fstat(self._fd(self._ino(inode))))

    @fuse_handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._ino(inode)
        fd = self._fd(ino)
        handle = self._files.get(fh) if fh is not None else None
        target: int | str = handle.fd if handle is not None else proc_path(fd)
        async with self.gate.change():
            n = self._newest_for(fd)
            if fields.update_size:
                await self._capture_truncate(n, ino, attr.st_size)
            else:
                await self._capture(n, attrs=[ino])
            if fields.update_mode:
                os.chmod(target, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(target, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
            if fields.update_size:
                os.truncate(target, attr.st_size)
            if fields.update_atime or fields.update_mtime:
                now = os.fstat(fd)
                os.utime(target, ns=(attr.st_atime_ns if fields.update_atime else now.st_atime_ns,
                                     attr.st_mtime_ns if fields.update_mtime else now.st_mtime_ns))
        return self._entry(os.fstat(fd))

    @fuse_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(b"", dir_fd=self._fd(self._ino(inode)))

    @fuse_handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Only called without default_permissions; the classic owner/group/other check."""
        st = os.fstat(self._fd(self._ino(inode)))
        if ctx.uid == 0:
            return not mode & os.X_OK or bool(st.st_mode & 0o111) or stat.S_ISDIR(st.st_mode)
        if st.st_uid == ctx.uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        return mode & granted == mode

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.root_fd)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(st, name))
        return data

    # ---- creating names --------------------------------------------------

    @fuse_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode &= ~(ctx.umask & 0o777)
        return await self._make(parent_inode, name, ctx,
                                lambda dir_fd: os.mknod(name, mode, rdev, dir_fd=dir_fd), mode)

    @fuse_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | (mode & 0o7777 & ~ctx.umask)
        return await self._make(parent_inode, name, ctx,
                                lambda dir_fd: os.mkdir(name, stat.S_IMODE(mode), dir_fd=dir_fd), mode)

    @fuse_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx,
                                lambda dir_fd: os.symlink(target, name, dir_fd=dir_fd), stat.S_IFLNK)

    @fuse_handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._ino(parent_inode)
        self._check_new_name(parent, name)
        parent_fd = self._fd(parent)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        async with self.gate.change():
            n = self.newest
            await self._capture(n, entries=[(parent, name)])
            fd = os.open(name, (flags & ~_OPEN_DROP) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode,
                         dir_fd=parent_fd)
            try:
                uid, gid = self._owner(ctx, parent_fd)
                os.fchown(fd, uid, gid)
                keep = self._special_bits(ctx, mode, gid)
                if keep:
                    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | keep)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                self._discard(parent_fd, name, stat.S_IFREG)
                raise
            self._note_new(n, st.st_ino)
        # No O_PATH descriptor is cached for the new file: while it is open `_fd` finds its
        # handle, afterwards it is reopened by number if ever needed (most new files are
        # only written and closed), which spares every create an open and the cache an eviction.
        fh = self._new_fh()
        self._files[fh] = _File(fd, st.st_ino)
        return _file_info(fh, flags), self._entry(st)

    @fuse_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._ino(inode)
        parent = self._ino(new_parent_inode)
        self._check_new_name(parent, new_name)
        fd = self._fd(ino)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            await self._capture(self.newest, attrs=[ino], entries=[(parent, new_name)])
            _link_fd(fd, parent_fd, new_name)
        st = os.fstat(fd)
        return self._entry(st)

    # ---- removing and moving names ------------------------------------------

    @fuse_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._ino(parent_inode)
        if self._hidden(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            n, st, born = await self._capture_removal(parent, parent_fd, name, directory=False)
            # No await from here on: the checks above hold when the change is applied.
            bury = n is not None and st.st_nlink == 1 and not born
            if bury:
                self._bury(parent_fd, name, st)
            try:
                os.unlink(name, dir_fd=parent_fd)
            except BaseException:
                if bury:
                    self._unbury(parent_fd, name, st)
                raise
            if bury:
                assert n is not None
                self._note_death(n, st.st_ino)

    @fuse_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._ino(parent_inode)
        if self._hidden(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            n, st, born = await self._capture_removal(parent, parent_fd, name, directory=True)
            # No await from here on.
            if n is None or born:
                os.rmdir(name, dir_fd=parent_fd)
                return
            self._check_empty(parent_fd, name)
            self._bury(parent_fd, name, st)
            self._note_death(n, st.st_ino)

    async def _capture_removal(self, parent: int, parent_fd: int, name: bytes, *,
                               directory: bool) -> tuple[int | None, os.stat_result, bool]:
        """Capture the entry `name` and the object it names, until the name is stable.

        Returns (newest snapshot, the object's stat, whether it was born after
        the snapshot). The caller must apply its change with no await in between.
        """
        while True:
            n = self.newest
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) != directory:
                raise pyfuse3.FUSEError(errno.ENOTDIR if directory else errno.EISDIR)
            if n is None:
                return None, st, False
            done, born = self._status(n, [st.st_ino], [(parent, name)])
            if done:
                return n, st, born[st.st_ino]
            await run_job(self.committer, self._capture_job(n, [st.st_ino], [(parent, name)]))

    @staticmethod
    def _check_empty(parent_fd: int, name: bytes) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            with os.scandir(fd) as entries:
                if next(entries, None) is not None:
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        finally:
            os.close(fd)

    @fuse_handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_parent = self._ino(parent_inode_old)
        new_parent = self._ino(parent_inode_new)
        if self._hidden(old_parent, name_old):
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._check_new_name(new_parent, name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old_fd = self._fd(old_parent)
        new_fd = self._fd(new_parent)
        entries = [(old_parent, name_old), (new_parent, name_new)]
        born: dict[int, bool] = {}
        async with self.gate.change():
            while True:
                n = self.newest
                moved = os.stat(name_old, dir_fd=old_fd, follow_symlinks=False)
                target = _lstat_or_none(new_fd, name_new)
                if n is None:
                    break
                inos = [moved.st_ino] + ([target.st_ino] if target is not None else [])
                done, born = self._status(n, inos, entries)
                if done:
                    break
                await run_job(self.committer, self._capture_job(n, inos, entries))
            # No await from here on.
            bury = (flags == 0 and n is not None and target is not None
                    and target.st_ino != moved.st_ino and not born[target.st_ino]
                    and self._prepare_replace(moved, target, new_fd, name_new))
            if bury:
                assert target is not None
                self._bury(new_fd, name_new, target)
            try:
                renameat2(old_fd, name_old, new_fd, name_new, flags)
            except BaseException:
                if bury:
                    assert target is not None
                    self._unbury(new_fd, name_new, target)
                raise
            if bury:
                assert n is not None and target is not None
                self._note_death(n, target.st_ino)

    def _prepare_replace(self, moved: os.stat_result, target: os.stat_result, dir_fd: int,
                         name: bytes) -> bool:
        """Check that `moved` may replace `target`; True if the target loses its last name."""
        if stat.S_ISDIR(target.st_mode):
            if not stat.S_ISDIR(moved.st_mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._check_empty(dir_fd, name)
            return True
        if stat.S_ISDIR(moved.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return target.st_nlink == 1

    # ---- files -----------------------------------------------------------

    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        ino = self._ino(inode)
        path_fd = self._fd(ino)
        path = proc_path(path_fd)
        reopen = (flags & ~_OPEN_DROP) | os.O_CLOEXEC
        if flags & os.O_TRUNC:
            async with self.gate.change():
                await self._capture_truncate(self._newest_for(path_fd), ino, 0)
                fd = os.open(path, reopen | os.O_TRUNC)
        else:
            fd = os.open(path, reopen)
        fh = self._new_fh()
        self._files[fh] = _File(fd, ino)
        return _file_info(fh, flags)

    def _file(self, fh: int) -> _File:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._file(fh).fd, size, off)

    @fuse_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file(fh)
        handle.ahead = _next_ahead(handle, off, len(buf))
        async with self.gate.change():
            n = self.newest
            if n is not None and self._write_needs_capture(n, handle, off, len(buf)):
                # A sequential overwriter gets the blocks it is about to overwrite captured
                # ahead, so one durable commit covers many of its writes.
                length = len(buf) + handle.ahead
                await run_job(self.committer,
                              lambda txn: self.engine.for_write(txn, n, handle.ino, off, length))
                self.cache.add_blocks(n, handle.ino, block_span(off, length))
            return os.pwrite(handle.fd, buf, off)

    @fuse_handler
    async def flush(self, fh: int) -> None:
        # Writes reach the backing file synchronously, so close has nothing to flush; ENOSYS
        # tells the kernel to stop sending FLUSH, one request less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._file(fh).fd
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)

    @fuse_handler
    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)

    # ---- directories -----------------------------------------------------

    @fuse_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        ino = self._ino(inode)
        fd = os.open(proc_path(self._fd(ino)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(fd) as entries:
                names = [os.fsencode(entry.name) for entry in entries]
        except BaseException:
            os.close(fd)
            raise
        if ino == self.root_ino:
            names = [name for name in names if name != schema.HIDDEN_DIR]
        fh = self._new_fh()
        self._dirs[fh] = _Dir(fd, ino, names)
        return fh

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(listing.names)):
            name = listing.names[index]
            try:
                fd, st = self._open_entry(listing.fd, name)
            except OSError:
                continue  # gone since opendir, or not part of the volume
            if not pyfuse3.readdir_reply(token, name, self._entry(st), index + 1):
                os.close(fd)
                break
            self._remember(fd, st)

    @fuse_handler
    async def releasedir(self, fh: int) -> None:
        listing = self._dirs.pop(fh, None)
        if listing is not None:
            os.close(listing.fd)

    @fuse_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        await trio.to_thread.run_sync(os.fsync, listing.fd)

    # ---- extended attributes ---------------------------------------------

    @fuse_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return os.getxattr(proc_path(self._fd(self._ino(inode))), name)

    @fuse_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in os.listxattr(proc_path(self._fd(self._ino(inode))))]

    @fuse_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self._ino(inode)
        fd = self._fd(ino)
        async with self.gate.change():
            await self._capture(self._newest_for(fd), attrs=[ino])
            os.setxattr(proc_path(fd), name, value)

    @fuse_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self._ino(inode)
        fd = self._fd(ino)
        async with self.gate.change():
            await self._capture(self._newest_for(fd), attrs=[ino])
            os.removexattr(proc_path(fd), name)


def _file_info(fh: int, flags: int) -> pyfuse3.FileInfo:
    """The open reply: cached I/O, except direct I/O for a file opened write-only.

    A write-only descriptor can neither read nor be mapped, so the kernel's page
    cache of the file gains nothing from its writes; with direct I/O the kernel
    hands the writer's own pages to this process instead of first copying them
    into that cache (one copy of every byte less, and no second cached copy of
    the data). Every write still reaches the handler before write() returns, as
    with cached writes (there is no writeback cache), and the kernel drops the
    cached pages of the written range, so other descriptors see the new bytes.
    """
    return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=flags & os.O_ACCMODE == os.O_WRONLY)


def _next_ahead(handle: _File, offset: int, length: int) -> int:
    """The capture-ahead of a handle after a write at `offset` (doubles while sequential)."""
    sequential = offset == handle.next_offset
    handle.next_offset = offset + length
    if not sequential:
        return 0
    return min(max(2 * handle.ahead, CAPTURE_AHEAD_MIN), CAPTURE_AHEAD_MAX)


def _lstat_or_none(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
