"""The live mount's FUSE handlers: a protocol adapter over the backing directory.

One job: serve a volume's backing directory through pyfuse3 exactly as the
backing filesystem would. Each changing handler resolves its inodes, asks the
capture planner (`capture.planner`) what the change needs, waits until that
is durable (`live.commit`), and applies one system call (a change that can
remove a last name goes through `capture.graveyard`). Every change passes
the hold gate (`live.gate`), so none is half-applied at a snapshot's instant.
What to capture, and the diff area itself, are not this module's business: it
opens no LMDB transaction.

Model: FUSE inode numbers are backing inode numbers, except that the backing
root is `pyfuse3.ROOT_INODE`. Objects are reached by inode number, never by
path (renames behind a path cannot confuse anything): a bounded cache
(`linux.fdcache`) keeps O_PATH|O_NOFOLLOW descriptors of recently used inodes
and any other inode is reopened by number (`open_by_ino`), so memory and open
descriptors do not grow with the number of files the kernel knows, and lookup
counts need no bookkeeping (the kernel drops an unlinked inode as soon as it is
unused, so an inode number it still refers to names the same object). The
kernel checks permissions (`default_permissions`, POSIX ACLs enabled); the
process runs as root and gives new objects to the caller.

Invariants:
- Capture happens before the change: a handler awaits the commit of every
  pre-image its plan needs, and then applies its change synchronously on the
  trio thread, with no `await` between its last plan and the change. Handlers
  run on one thread, so the plan-and-change of one handler is atomic with
  respect to every other handler (s3ql's rule: a new `await` between two
  adjacent steps breaks this).
- An evicted descriptor leaves its generation behind (XFS, btrfs); while a change
  is in flight (a handler may hold it across an await) it is retired, not closed.
- `<backing>/.shadowfs` does not exist in the mount: lookups fail with
  ENOENT, listings omit it, the root's link count leaves it out, nothing can
  be created or renamed onto it.
- Only `FUSEError` leaves a handler (`fuse_adapter.fuse_handler`).
- Every changing handler gives the planner its request context as the change's
  caller (design §3.14); an open file keeps its opener's for its writes (a
  WRITE request names none). Only a capture makes anything of it.
- The kernel may cache names and attributes for long (`IN_PLACE_CACHE_TIMEOUT`)
  only when the mount is in place: then every change reaches the kernel
  first, and it invalidates what the change makes stale itself.
- A file opened write-only is served with direct I/O (`_file_info`), unless
  it has a set-id bit; every other open is cached. No writeback cache: a
  write reaches the handler before write() returns, so the hold gate sees
  every change.
- A write, truncate or chown by a caller without CAP_FSETID clears S_ISUID,
  and S_ISGID when the group may execute: the kernel asks for it with a
  SETATTR of the mode in the caller's name, captured like any chmod. It
  cannot on two paths: a direct write carries FUSE_WRITE_KILL_SUIDGID, which
  pyfuse3 drops (so set-id files get no direct I/O), and an open with O_TRUNC
  drops the mode change (so `open` clears the bits itself).
- Handlers keep pyfuse3's parameter types (`pyfuse3.InodeT` and friends,
  plain ints). An inode number from the kernel is a `FuseInode`, and `_ino`
  turns it into the `BackingIno` that the capture planner and the descriptor
  cache take (`_inode` the other way, for replies); an inode from a stat of
  the backing filesystem is typed where it is read. Open files keep their
  `BackingIno`, so a write converts nothing.
- With our pyfuse3 patches (`fuse_adapter.binding`), `write` gets a view of
  libfuse's request buffer, valid until it returns (also across the capture's
  await), and `read` answers with a `FileRange` of the backing file, which
  pyfuse3 reads (or splices) right after `read` returns; else bytes, as stock.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NewType

import pyfuse3
import trio

from shadowfs.capture.graveyard import Graveyard
from shadowfs.capture.planner import CapturePlanner
from shadowfs.diffarea.schema import HIDDEN_DIR, BackingIno
from shadowfs.fuse_adapter import binding, fuse_handler
from shadowfs.linux import syscalls
from shadowfs.linux.fdcache import DescriptorCache
from shadowfs.linux.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, link_fd, open_by_ino, proc_path
from shadowfs.live import handles, modes
from shadowfs.live.commit import settle, store
from shadowfs.live.gate import HoldGate
from shadowfs.live.writeahead import WriteAhead

log = logging.getLogger(__name__)

FuseInode = NewType("FuseInode", int)
"""An inode number of the live mount as the kernel knows it: the backing inode, except
`pyfuse3.ROOT_INODE` for the backing root (`LiveOperations._ino` and `_inode` convert)."""

# How long the kernel may trust a name or attributes it got from the mount without asking again.
# Every change to the volume goes through the mount's handlers, and the kernel invalidates what a
# change it passed on makes stale, so only a change behind the kernel's back could leave it stale.
# Mounted in place nothing can make one (the backing tree is hidden under the mount and the mount
# process itself changes only the hidden .shadowfs), so the kernel may trust its caches for long:
# that saves a LOOKUP or GETATTR per name touched again (stat, unlink after create...). A separate
# mount leaves the backing tree reachable beside it, so its caches expire quickly.
CACHE_TIMEOUT = 1.0
IN_PLACE_CACHE_TIMEOUT = 60.0
PATH_FD_CAPACITY = 4096  # O_PATH descriptors kept open (the rest are reopened by inode number)
_SET_ID = stat.S_ISUID | stat.S_ISGID

_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Flags that make no sense on a reopen through /proc, or that the kernel handles itself:
# O_APPEND is dropped so that the offset the kernel sends is the offset written (and captured).
_OPEN_DROP = (os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_APPEND | os.O_DIRECT
              | os.O_TRUNC)


@dataclass
class _File:
    fd: int
    ino: BackingIno
    writes: WriteAhead = field(default_factory=WriteAhead)


@dataclass
class _Dir:
    fd: int  # O_RDONLY | O_DIRECTORY
    ino: BackingIno
    names: list[bytes] = field(default_factory=list)


class LiveOperations(pyfuse3.Operations):
    """pyfuse3 handlers of one volume's live mount (see the module docstring)."""

    enable_acl = True
    enable_writeback_cache = False
    supports_dot_lookup = True
    write_memoryview = False  # these two are read by pyfuse3 at init (patches 0002, 0003)
    enable_splice_write = False

    def __init__(self, root_fd: int, planner: CapturePlanner, graveyard: Graveyard, gate: HoldGate, *,
                 cache_timeout: float = CACHE_TIMEOUT) -> None:
        super().__init__()
        features = binding()
        self.write_memoryview = features.write_memoryview  # valid across the capture's await
        self.enable_splice_write = self._file_range = features.file_range
        self.cache_timeout = cache_timeout  # entry and attribute timeout of every reply
        self.root_fd = root_fd
        self.planner = planner
        self.graveyard = graveyard
        self.committer = planner.committer
        self.gate = gate
        root = os.fstat(root_fd)
        self.root_ino = BackingIno(root.st_ino)
        self.root_dev = root.st_dev
        self._hidden_inos = {os.stat(HIDDEN_DIR, dir_fd=root_fd, follow_symlinks=False).st_ino,
                             os.fstat(graveyard.fd).st_ino}
        self._root_path = os.open(".", _O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=root_fd)
        self._retired: list[int] = []
        self._paths: DescriptorCache[BackingIno] = DescriptorCache(
            PATH_FD_CAPACITY, lambda ino: open_by_ino(root_fd, ino, _O_PATH_FLAGS), dispose=self._retire)
        self.gate.on_idle = self._reap
        self._files: handles.OpenHandles[_File] = handles.OpenHandles(self._reopen_file)
        self._dirs: handles.OpenHandles[_Dir] = handles.OpenHandles(self._reopen_dir)

    def close(self) -> None:
        """Close every descriptor the handlers hold (after the FUSE loop ended)."""
        for fd in [f.fd for f in self._files.values()] + [d.fd for d in self._dirs.values()]:
            os.close(fd)
        self._files.clear()
        self._dirs.clear()
        self._paths.close()
        self._reap()
        os.close(self._root_path)

    # ---- inode table -----------------------------------------------------

    def _ino(self, inode: FuseInode) -> BackingIno:
        return self.root_ino if inode == pyfuse3.ROOT_INODE else BackingIno(inode)

    def _inode(self, ino: BackingIno) -> FuseInode:
        return FuseInode(pyfuse3.ROOT_INODE if ino == self.root_ino else ino)

    def _fd(self, ino: BackingIno) -> int:
        """An O_PATH descriptor of `ino`: cached, reopened by number, or an open file's own."""
        if ino == self.root_ino:
            return self._root_path
        try:
            return self._paths.open(ino)
        except OSError as exc:
            # an open file with no name left cannot be reopened by number
            for handle in self._files.values():
                if handle.ino == ino:
                    return handle.fd
            raise pyfuse3.FUSEError(exc.errno or errno.ESTALE) from None

    def _remember(self, fd: int, st: os.stat_result) -> None:
        """Keep `fd` as the cached descriptor of `st.st_ino`; takes ownership."""
        if st.st_ino == self.root_ino:
            os.close(fd)
        else:
            self._paths.put(BackingIno(st.st_ino), fd)

    def _retire(self, fd: int) -> None:
        """Dispose of an evicted descriptor: a handler may hold it across an await until idle."""
        syscalls.remember_generation(self.root_fd, fd)  # XFS, btrfs: to reopen it by number
        if self.gate.in_flight > 0:
            self._retired.append(fd)
        else:
            os.close(fd)

    def _reap(self) -> None:
        retired, self._retired = self._retired, []
        for fd in retired:
            os.close(fd)

    def _hidden(self, dir_ino: BackingIno, name: bytes) -> bool:
        return dir_ino == self.root_ino and name == HIDDEN_DIR

    def _visible(self, parent_inode: FuseInode, name: bytes) -> BackingIno:
        """The backing inode of a directory whose entry `name` an existing-name request names."""
        parent = self._ino(parent_inode)
        if self._hidden(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return parent

    def _new_name(self, parent_inode: FuseInode, name: bytes) -> BackingIno:
        """The backing inode of a directory in which `name` is to be made."""
        parent = self._ino(parent_inode)
        if self._hidden(parent, name):
            raise pyfuse3.FUSEError(errno.EPERM)
        return parent

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

    def _entry(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self._inode(BackingIno(st.st_ino))
        attr.generation = 0
        attr.entry_timeout = self.cache_timeout
        attr.attr_timeout = self.cache_timeout
        attr.st_mode = st.st_mode
        # The root's link count leaves the hidden .shadowfs subdirectory out (as the snapshot view does).
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

    def _file(self, fh: pyfuse3.FileHandleT) -> _File:
        return self._files.get(fh)

    def _reopen(self, handle: handles.Handle) -> int:
        """A descriptor for a handle this process did not give out: one its predecessor on the same
        FUSE connection gave out before it died (`live.handoff`). The handle says what to open."""
        try:
            with self._paths.borrow(BackingIno(handle.ino)) as path_fd:
                return os.open(proc_path(path_fd), handle.flags | os.O_CLOEXEC)
        except OSError as exc:
            raise pyfuse3.FUSEError(errno.EBADF if exc.errno == errno.ENOENT else exc.errno or errno.EBADF
                                    ) from None

    def _reopen_file(self, handle: handles.Handle) -> _File:
        if handle.directory:
            raise pyfuse3.FUSEError(errno.EBADF)
        return _File(self._reopen(handle), BackingIno(handle.ino))

    def _reopen_dir(self, handle: handles.Handle) -> _Dir:
        """A directory a predecessor opened is listed again (its offsets then index the new listing:
        entries made or removed since may show twice or not at all)."""
        if not handle.directory:
            raise pyfuse3.FUSEError(errno.EBADF)
        return self._listing(self._reopen(handle), BackingIno(handle.ino))

    # ---- lookups and attributes -------------------------------------------

    @fuse_handler
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._visible(FuseInode(parent_inode), name)
        if name == b".." and parent == self.root_ino:
            name = b"."
        fd, st = self._open_entry(self._fd(parent), name)
        self._remember(fd, st)
        return self._entry(st)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """Nothing to drop: no per-inode state is kept beyond the bounded descriptor cache."""

    @fuse_handler
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(os.fstat(self._fd(self._ino(FuseInode(inode)))))

    @fuse_handler
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._ino(FuseInode(inode))
        fd = self._fd(ino)
        handle = self._files.known(fh) if fh is not None else None
        async with self.gate.change():
            seq = self.planner.seq_for(fd)
            await store(self.committer, self.planner.truncate(seq, ino, attr.st_size, ctx)
                        if fields.update_size else self.planner.objects(seq, [ino], caller=ctx, op="setattr"))
            _apply_setattr(handle.fd if handle is not None else proc_path(fd), fd, attr, fields)
        return self._entry(os.fstat(fd))

    @fuse_handler
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(b"", dir_fd=self._fd(self._ino(FuseInode(inode))))

    @fuse_handler
    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext) -> bool:
        """Only called without default_permissions; the classic owner/group/other check."""
        return modes.permits(os.fstat(self._fd(self._ino(FuseInode(inode)))), mode, ctx)

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
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode &= ~(ctx.umask & 0o777)
        return await self._make(FuseInode(parent_inode), name, ctx, "mknod",
                                lambda dir_fd: os.mknod(name, mode, rdev, dir_fd=dir_fd), mode)

    @fuse_handler
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | (mode & 0o7777 & ~ctx.umask)
        return await self._make(FuseInode(parent_inode), name, ctx, "mkdir",
                                lambda dir_fd: os.mkdir(name, stat.S_IMODE(mode), dir_fd=dir_fd), mode)

    @fuse_handler
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(FuseInode(parent_inode), name, ctx, "symlink",
                                lambda dir_fd: os.symlink(target, name, dir_fd=dir_fd), stat.S_IFLNK)

    async def _make(self, parent_inode: FuseInode, name: bytes, ctx: pyfuse3.RequestContext, op: str,
                    make: Callable[[int], None], mode: int) -> pyfuse3.EntryAttributes:
        """Shared flow of mknod / mkdir / symlink (`op`): capture the entry, make, give to the caller."""
        parent = self._new_name(parent_inode, name)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            seq = self.planner.newest
            await store(self.committer, self.planner.objects(seq, (), [(parent, name)], ctx, op))
            make(parent_fd)
            fd, st = _give_to_caller(parent_fd, name, mode, ctx, self._open_entry)
            self.planner.note_new(seq, BackingIno(st.st_ino))
        self._remember(fd, st)
        return self._entry(st)

    @fuse_handler
    async def create(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._new_name(FuseInode(parent_inode), name)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            seq = self.planner.newest
            await store(self.committer, self.planner.objects(seq, entries=[(parent, name)], caller=ctx,
                                                             op="create"))
            fd, st = _create_file(parent_fd, name, stat.S_IMODE(mode) & ~ctx.umask, flags, ctx)
            ino = BackingIno(st.st_ino)
            self.planner.note_new(seq, ino)
        # No O_PATH descriptor is cached for the new file: while it is open `_fd` finds its
        # handle, afterwards it is reopened by number if ever needed (most new files are
        # only written and closed), which spares every create an open and the cache an eviction.
        fh = self._files.add(ino, flags, _File(fd, ino, WriteAhead(ctx)))
        return _file_info(fh, flags, fd, st), self._entry(st)

    @fuse_handler
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._ino(FuseInode(inode))
        parent = self._new_name(FuseInode(new_parent_inode), new_name)
        fd = self._fd(ino)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            capture = self.planner.objects(self.planner.newest, attrs=[ino], entries=[(parent, new_name)],
                                           caller=ctx, op="link")
            await store(self.committer, capture)
            link_fd(fd, parent_fd, new_name)
        return self._entry(os.fstat(fd))

    # ---- removing and moving names ------------------------------------------

    @fuse_handler
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._visible(FuseInode(parent_inode), name)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            plan = await settle(self.committer,
                                lambda: self.planner.removal(parent, parent_fd, name, directory=False,
                                                             caller=ctx))
            self.graveyard.unlink(plan, parent_fd, name)  # no await since the plan: it still holds

    @fuse_handler
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._visible(FuseInode(parent_inode), name)
        parent_fd = self._fd(parent)
        async with self.gate.change():
            plan = await settle(self.committer,
                                lambda: self.planner.removal(parent, parent_fd, name, directory=True,
                                                             caller=ctx))
            self.graveyard.rmdir(plan, parent_fd, name)

    @fuse_handler
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: bytes,
                     parent_inode_new: pyfuse3.InodeT, name_new: bytes, flags: pyfuse3.FlagT,
                     ctx: pyfuse3.RequestContext) -> None:
        old_parent = self._visible(FuseInode(parent_inode_old), name_old)
        new_parent = self._new_name(FuseInode(parent_inode_new), name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old_fd = self._fd(old_parent)
        new_fd = self._fd(new_parent)
        async with self.gate.change():
            plan = await settle(self.committer, lambda: self.planner.rename(
                old_parent, old_fd, name_old, new_parent, new_fd, name_new, ctx))
            self.graveyard.rename(plan, old_fd, name_old, new_fd, name_new, flags)

    # ---- files -----------------------------------------------------------

    @fuse_handler
    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        ino = self._ino(FuseInode(inode))
        path_fd = self._fd(ino)
        reopen = (flags & ~_OPEN_DROP) | os.O_CLOEXEC
        st: os.stat_result | None = None
        if flags & os.O_TRUNC:
            async with self.gate.change():
                # the truncate's capture holds the attributes, so it covers the set-id bits too
                await store(self.committer, self.planner.truncate(self.planner.seq_for(path_fd), ino, 0, ctx))
                fd = os.open(proc_path(path_fd), reopen | os.O_TRUNC)
                st = _truncated_by(fd, ctx)
        else:
            fd = os.open(proc_path(path_fd), reopen)
        fh = self._files.add(ino, flags, _File(fd, ino, WriteAhead(ctx)))  # its writes are the opener's
        return _file_info(fh, flags, fd, st)

    @fuse_handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes | pyfuse3.FileRange:
        fd = self._file(fh).fd  # a FileRange is read right after return, before any await: fd is open
        return pyfuse3.FileRange(fd, off, size) if self._file_range else os.pread(fd, size, off)

    @fuse_handler
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes | memoryview) -> int:
        handle = self._file(fh)
        async with self.gate.change():
            await handle.writes.before_write(self.planner, self.committer, handle.ino, handle.fd,
                                             off, len(buf))
            return os.pwrite(handle.fd, buf, off)

    @fuse_handler
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        # Writes reach the backing file synchronously, so close has nothing to flush; ENOSYS
        # tells the kernel to stop sending FLUSH, one request less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_handler
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        fd = self._file(fh).fd
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)

    @fuse_handler
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._files.pop(fh)
        if handle is not None:
            os.close(handle.fd)

    # ---- directories -----------------------------------------------------

    @fuse_handler
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        ino = self._ino(FuseInode(inode))
        fd = os.open(proc_path(self._fd(ino)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._dirs.add(ino, handles.DIRECTORY, self._listing(fd, ino))

    def _listing(self, fd: int, ino: BackingIno) -> _Dir:
        """The names of directory `fd` (`ino`), read once per open; takes ownership of `fd`."""
        try:
            with os.scandir(fd) as entries:
                names = [os.fsencode(entry.name) for entry in entries]
        except BaseException:
            os.close(fd)
            raise
        if ino == self.root_ino:
            names = [name for name in names if name != HIDDEN_DIR]
        return _Dir(fd, ino, names)

    def _dir(self, fh: pyfuse3.FileHandleT) -> _Dir:
        return self._dirs.get(fh)

    @fuse_handler
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dir(fh)
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
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        listing = self._dirs.pop(fh)
        if listing is not None:
            os.close(listing.fd)

    @fuse_handler
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fsync, self._dir(fh).fd)

    # ---- extended attributes ---------------------------------------------

    @fuse_handler
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return os.getxattr(proc_path(self._fd(self._ino(FuseInode(inode)))), name)

    @fuse_handler
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in os.listxattr(proc_path(self._fd(self._ino(FuseInode(inode)))))]

    @fuse_handler
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        ino = self._ino(FuseInode(inode))
        fd = self._fd(ino)
        async with self.gate.change():
            await store(self.committer, self.planner.objects(self.planner.seq_for(fd), [ino], caller=ctx,
                                                             op="setxattr"))
            os.setxattr(proc_path(fd), name, value)

    @fuse_handler
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self._ino(FuseInode(inode))
        fd = self._fd(ino)
        async with self.gate.change():
            await store(self.committer, self.planner.objects(self.planner.seq_for(fd), [ino], caller=ctx,
                                                             op="removexattr"))
            os.removexattr(proc_path(fd), name)


# ---- what the handlers apply ------------------------------------------------------------------


def _file_info(fh: int, flags: int, fd: int, st: os.stat_result | None = None) -> pyfuse3.FileInfo:
    """The open reply: cached I/O, except direct I/O for a file opened write-only.

    A write-only descriptor can neither read nor be mapped, so the kernel's page
    cache of the file gains nothing from its writes; with direct I/O the kernel
    hands the writer's own pages to this process instead of first copying them
    into that cache (one copy of every byte less, and no second cached copy of
    the data). Every write still reaches the handler before write() returns, as
    with cached writes (there is no writeback cache), and the kernel drops the
    cached pages of the written range, so other descriptors see the new bytes.

    A file with a set-id bit is cached also when opened write-only: only a cached
    write makes the kernel clear the bits first (a SETATTR in the writer's name,
    when it lacks CAP_FSETID); a direct write asks the filesystem to do it with
    FUSE_WRITE_KILL_SUIDGID, which pyfuse3 does not hand to `write`. `st`: the
    file's stat if the caller has it (else `fd` is asked, when write-only).
    """
    direct = flags & os.O_ACCMODE == os.O_WRONLY and not _SET_ID & (
        st if st is not None else os.fstat(fd)).st_mode
    return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=direct)



def _truncated_by(fd: int, ctx: pyfuse3.RequestContext) -> os.stat_result:
    """After an open with O_TRUNC (`fd`): clear the set-id bits the caller's truncation clears.

    Any other truncation by a caller without CAP_FSETID reaches `setattr` with the
    cleared mode; this one does not (the kernel truncates in OPEN and drops the mode
    change), so it is done here. The caller holds CAP_FSETID when it is root (the
    request carries no capabilities). The kernel refreshes the mode before the open
    returns (`handle_truncate` asks GETATTR), so it keeps nothing stale. The stat after.
    """
    st = os.fstat(fd)
    cleared = modes.set_id_cleared(st.st_mode)
    if cleared and ctx.uid != 0:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~cleared)
        st = os.fstat(fd)
    return st


def _apply_setattr(target: int | str, fd: int, attr: pyfuse3.EntryAttributes,
                   fields: pyfuse3.SetattrFields) -> None:
    """Apply the fields of a SETATTR to `target` (an open file's descriptor, or a /proc path)."""
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


def _create_file(parent_fd: int, name: bytes, mode: int, flags: int,
                 ctx: pyfuse3.RequestContext) -> tuple[int, os.stat_result]:
    """Create and open regular file `name`, the caller's; (descriptor, stat). Half-made: removed."""
    fd = os.open(name, (flags & ~_OPEN_DROP) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode,
                 dir_fd=parent_fd)
    try:
        uid, gid = modes.owner(ctx, parent_fd)
        os.fchown(fd, uid, gid)
        keep = modes.special_bits(ctx, mode, gid)
        if keep:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | keep)
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        _discard(parent_fd, name, stat.S_IFREG)
        raise


def _give_to_caller(parent_fd: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                    open_entry: Callable[[int, bytes], tuple[int, os.stat_result]]
                    ) -> tuple[int, os.stat_result]:
    """Make the new object `name` the caller's (owner, set-id bits); its O_PATH descriptor and stat.

    A half-made object is removed again when this fails.
    """
    try:
        uid, gid = modes.owner(ctx, parent_fd)
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        fd, st = open_entry(parent_fd, name)
    except BaseException:
        _discard(parent_fd, name, mode)
        raise
    keep = 0 if stat.S_ISDIR(mode) or stat.S_ISLNK(mode) else modes.special_bits(ctx, mode, gid)
    if keep:
        os.chmod(proc_path(fd), stat.S_IMODE(st.st_mode) | keep)
        st = os.fstat(fd)
    return fd, st




def _discard(parent_fd: int, name: bytes, mode: int) -> None:
    try:
        if stat.S_ISDIR(mode):
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
    except OSError:
        log.exception("could not remove half-made %r", name)
