"""The snapshot browser's refusals: every pyfuse3 handler that would change something.

One job: answer EROFS to every mutating request (setattr, mknod, mkdir,
unlink, rmdir, symlink, rename, link, create, write, setxattr, removexattr),
so `browser.ops.BrowserOperations`, which inherits them, holds only what the
browser serves.

Invariants:
- Nothing is ever written: each of these handlers raises
  ``FUSEError(EROFS)`` and does nothing else (the mount is also
  "ro,nosuid,nodev", so most never reach the browser).
"""

from __future__ import annotations

import errno

import pyfuse3

from shadowfs.fuse_adapter import fuse_handler


class ReadOnlyOperations(pyfuse3.Operations):
    """pyfuse3 handlers that refuse every change with EROFS."""


    @fuse_handler
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: bytes,
                     parent_inode_new: pyfuse3.InodeT, name_new: bytes, flags: pyfuse3.FlagT,
                     ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def create(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: pyfuse3.ModeT,
                     flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    @fuse_handler
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)




__all__ = ["ReadOnlyOperations"]
