"""One snapshot of one volume as a read-only tree of its own, with the volume's inode numbers.

One job: the pyfuse3 `Operations` of an exposed snapshot (`shadowfs exec`,
`snapshot expose`): the tree of `SnapshotView`, where the snapshot browser
shows every set of every volume in one tree.

Invariants:
- The node id of an object is its backing inode number, and so is its st_ino
  (the root is node 1, as FUSE wants, and reports the backing root's number).
  An object unchanged between two snapshots therefore shows the same inode
  number, size, mtime and ctime in both, which is what restic's and borg's
  change detection compare: a second backup reads only what changed. A
  backing object numbered 1 would collide with the root and answers EIO
  (ext4, XFS and btrfs never give a file or directory that number).
- Nothing is ever written: every mutating handler answers EROFS
  (`browser.readonly`), open allows O_RDONLY only, and the mount is
  "ro,nosuid,nodev".
- Entries, attributes and negative entries may be cached by the kernel for
  SNAPSHOT_TIMEOUT and pages kept: the snapshot never changes. A deleted
  snapshot answers ESTALE, a damaged object EIO (both from `SnapshotView`),
  and an object that cannot be read is never cached.
- Blocking work (backing-file I/O, LMDB) runs in worker threads; a
  `SnapshotView` is safe to share between them.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pyfuse3
import trio

from shadowfs.browser import files
from shadowfs.browser.attrs import negative_entry, snapshot_attrs, unreadable_attrs
from shadowfs.browser.nodes import NodeId
from shadowfs.browser.readonly import ReadOnlyOperations
from shadowfs.diffarea.schema import AttrRecord, BackingIno
from shadowfs.fuse_adapter import fuse_handler
from shadowfs.snapshot.view import SnapshotView

T = TypeVar("T")
ROOT = pyfuse3.ROOT_INODE
MAX_LISTING = 1 << 20  # entries of one directory read with their attributes at opendir


@dataclass
class _OpenFile:
    ino: BackingIno
    size: int  # at the snapshot
    fd: int | None  # own descriptor of the live file, None once every block was captured
    captured: bool = False  # whether the last read met a captured block


class ExposedOperations(ReadOnlyOperations):
    """The tree of snapshot `view`, node ids from backing inode numbers."""

    def __init__(self, view: SnapshotView) -> None:
        super().__init__()
        self.view = view
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._handles = itertools.count(1)

    # ---- numbers -----------------------------------------------------------------------------

    def _ino(self, inode: int) -> BackingIno:
        return self.view.root_ino if inode == ROOT else BackingIno(inode)

    def _attrs(self, ino: BackingIno, record: AttrRecord) -> pyfuse3.EntryAttributes:
        if ino == ROOT and ino != self.view.root_ino:
            raise OSError(errno.EIO, "backing inode 1 collides with the root of the exposed tree")
        return snapshot_attrs(NodeId(ino), record)

    async def _run(self, func: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(func)

    # ---- attributes and names ----------------------------------------------------------------

    @fuse_handler
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._ino(parent_inode)

        def look() -> pyfuse3.EntryAttributes:
            try:
                record = self.view.lookup(parent, name)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return negative_entry()
                raise
            return self._attrs(record.ino, self.view.attr(record.ino))

        return await self._run(look)

    @fuse_handler
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._ino(inode)
        # for the root this reports the backing root's number: a getattr reply names no node
        return await self._run(lambda: self._attrs(ino, self.view.attr(ino)))

    @fuse_handler
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        ino = self._ino(inode)
        return await self._run(lambda: self.view.readlink(ino))

    @fuse_handler
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        ino = self._ino(inode)
        value = (await self._run(lambda: self.view.xattrs(ino))).get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @fuse_handler
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        ino = self._ino(inode)
        return list(await self._run(lambda: self.view.xattrs(ino)))

    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks modes and ACLs itself

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # nothing is kept per node

    @fuse_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.fstatvfs(self.view.live.root_fd)
        data = pyfuse3.StatvfsData()
        data.f_bsize, data.f_frsize = st.f_bsize, st.f_frsize
        data.f_blocks, data.f_bfree, data.f_bavail = st.f_blocks, 0, 0
        data.f_files, data.f_ffree, data.f_favail = st.f_files, 0, 0
        data.f_namemax = st.f_namemax
        return data

    # ---- directories -------------------------------------------------------------------------

    @fuse_handler
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        ino = self._ino(inode)

        def listing() -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
            read = self.view.listdir_attrs(ino, MAX_LISTING)
            if read is None:
                raise OSError(errno.EFBIG, f"directory of more than {MAX_LISTING} entries")
            entries = []
            for name, child, record in read:
                if isinstance(record, OSError):
                    entries.append((name, unreadable_attrs(NodeId(child))))
                else:
                    entries.append((name, self._attrs(child, record)))
            return entries

        entries = await self._run(listing)
        fh = next(self._handles)
        self._dirs[fh] = entries
        return pyfuse3.FileHandleT(fh)

    @fuse_handler
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh)
        if entries is None:
            raise OSError(errno.EBADF, "unknown directory handle")
        for position in range(start_id, len(entries)):
            name, attrs = entries[position]
            if not pyfuse3.readdir_reply(token, name, attrs, position + 1):
                break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)

    # ---- files -------------------------------------------------------------------------------

    @fuse_handler
    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        ino = self._ino(inode)
        size, fd = await self._run(lambda: files.open_file(self.view, ino))
        fh = next(self._handles)
        self._files[fh] = _OpenFile(ino, size, fd)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    @fuse_handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int,  # type: ignore[override]
                   size: int) -> bytes | bytearray:
        handle = self._files.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle")
        data, handle.captured = await self._run(lambda: self.view.read_hinted(
            handle.ino, off, size, handle.size, handle.fd, live_first=not handle.captured))
        return data

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.fd is not None:
            os.close(handle.fd)

    def close(self) -> None:
        for handle in self._files.values():
            if handle.fd is not None:
                os.close(handle.fd)
        self._files.clear()


__all__ = ["ExposedOperations"]
