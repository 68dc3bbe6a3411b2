"""The snapshot browser's handlers called directly, without a mount: the refusals the kernel's
"ro" mount option never lets through, node bookkeeping (lookup, forget), and damaged objects."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pyfuse3
import pytest

from shadowfs.browser.nodes import snapshot_node
from shadowfs.browser.ops import BrowserOperations, DirHandle
from tests.support.browser_fixtures import Workspace, workspace

__all__ = ["workspace"]  # the fixture, imported for pytest

SET_A = "0d8e6a52-4a8e-4f3e-9d0c-1f6a2b3c4d5e"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def test_handlers_refuse_every_change_without_a_mount(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    _write(v.path("f"), b"x")
    seq = v.take(SET_A)
    v.close()  # one LMDB environment per process: the browser's own
    workspace.volumes.remove(v)
    ops = BrowserOperations()
    try:
        ops.set_volumes([("data", 1, v.diff_area, os.open(v.backing, os.O_RDONLY | os.O_DIRECTORY))])
        ctx: Any = None
        root = (await ops.lookup(pyfuse3.ROOT_INODE, SET_A.encode(), ctx)).st_ino
        vol_root = (await ops.lookup(root, b"data", ctx)).st_ino
        f = (await ops.lookup(vol_root, b"f", ctx)).st_ino
        assert f == snapshot_node(1, seq, os.stat(v.path("f")).st_ino)
        assert ops.known_nodes() == 3
        attr, fields = pyfuse3.EntryAttributes(), pyfuse3.SetattrFields()
        refused = {
            "setattr": ops.setattr(f, attr, fields, None, ctx),
            "mknod": ops.mknod(vol_root, b"n", stat.S_IFIFO | 0o644, 0, ctx),
            "mkdir": ops.mkdir(vol_root, b"d", 0o755, ctx),
            "unlink": ops.unlink(vol_root, b"f", ctx),
            "rmdir": ops.rmdir(pyfuse3.ROOT_INODE, SET_A.encode(), ctx),
            "symlink": ops.symlink(vol_root, b"s", b"f", ctx),
            "rename": ops.rename(vol_root, b"f", vol_root, b"g", 0, ctx),
            "link": ops.link(f, vol_root, b"h", ctx),
            "create": ops.create(vol_root, b"c", 0o644, os.O_WRONLY, ctx),
            "write": ops.write(1, 0, b"data"),
            "setxattr": ops.setxattr(f, b"user.x", b"1", ctx),
            "removexattr": ops.removexattr(f, b"user.x", ctx),
            "open O_WRONLY": ops.open(f, os.O_WRONLY, ctx),
            "open O_RDWR": ops.open(f, os.O_RDWR, ctx),
        }
        for name, call in refused.items():
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await call
            assert exc.value.errno == errno.EROFS, name
        info = await ops.open(f, os.O_RDONLY, ctx)
        assert info.keep_cache and await ops.read(info.fh, 0, 100) == b"x"
        await ops.release(info.fh)
        await ops.forget([(f, 1), (vol_root, 1), (root, 1)])
        assert ops.known_nodes() == 0
    finally:
        ops.close()


async def test_damaged_objects_answer_eio_and_stay_listed(workspace: Workspace) -> None:
    """Design §9.3 through the handlers: every look at a damaged object fails with EIO (a FUSEError,
    nothing else escapes), its directory still lists it with attributes the kernel may not keep,
    and the other objects answer as before."""
    v = workspace.volume("data", 1)
    os.mkdir(v.path("d"))
    _write(v.path("d/f"), b"damaged")
    _write(v.path("ok"), b"fine")
    os.symlink("ok", v.path("link"))
    seq = v.take(SET_A)
    with v.area.write() as txn:
        for rel in ("d/f", "link"):
            assert v.area.mark_damaged(txn, os.lstat(v.path(rel)).st_ino, rel, "test", "2026-11-22T08:00:00Z")
    v.close()  # one LMDB environment per process: the browser's own
    workspace.volumes.remove(v)
    ops = BrowserOperations()
    try:
        ops.set_volumes([("data", 1, v.diff_area, os.open(v.backing, os.O_RDONLY | os.O_DIRECTORY))])
        ctx: Any = None
        root = (await ops.lookup(pyfuse3.ROOT_INODE, SET_A.encode(), ctx)).st_ino
        vol_root = (await ops.lookup(root, b"data", ctx)).st_ino
        d = (await ops.lookup(vol_root, b"d", ctx)).st_ino
        f = snapshot_node(1, seq, os.stat(v.path("d/f")).st_ino)
        link = snapshot_node(1, seq, os.lstat(v.path("link")).st_ino)
        failing = {
            "lookup": ops.lookup(d, b"f", ctx),
            "lookup of a symlink": ops.lookup(vol_root, b"link", ctx),
            "getattr": ops.getattr(f, ctx),
            "readlink": ops.readlink(link, ctx),
            "getxattr": ops.getxattr(f, b"user.x", ctx),
            "listxattr": ops.listxattr(f, ctx),
            "open": ops.open(f, os.O_RDONLY, ctx),
        }
        for name, call in failing.items():
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await call
            assert exc.value.errno == errno.EIO, name
        handle = DirHandle(await ops._listing(d))
        assert [name for name, _ in handle.entries] == [b"f"]
        await ops._fill_window(handle, 0)
        placeholder = handle.window[0]
        assert placeholder is not None and placeholder.st_ino == f
        assert placeholder.entry_timeout == 0 and placeholder.attr_timeout == 0
        assert stat.S_ISREG(placeholder.st_mode)
        ok = (await ops.lookup(vol_root, b"ok", ctx)).st_ino
        info = await ops.open(ok, os.O_RDONLY, ctx)
        assert await ops.read(info.fh, 0, 100) == b"fine"
        await ops.release(info.fh)
    finally:
        ops.close()
