"""Pieces shared by the two FUSE filesystems (live mount and snapshot browser).

One job: the handler contract and mount plumbing. `fuse_handler` wraps every
pyfuse3 handler so that only `FUSEError` ever escapes (an `OSError` becomes its
errno, anything else is logged and becomes EIO), because any other exception
kills the mount. `mount_options` and the readahead knob are the same for both
mounts. `binding` says which features of our pyfuse3 patches
(`patches/pyfuse3/`) the pyfuse3 in use has: both mounts keep the stock
pyfuse3 3.5 path for each one that is missing. Finding and removing mounts by
path is `linux.mounts` (no pyfuse3).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from shadowfs.linux.mounts import unescape

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def fuse_handler(func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn OSError into FUSEError(errno) and anything unexpected into a logged EIO."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(frozen=True)
class Binding:
    """Features of the pyfuse3 in use beyond stock 3.5 (patches/pyfuse3/README.md)."""

    write_memoryview: bool  # 0002: Operations.write_memoryview
    file_range: bool  # 0003: pyfuse3.FileRange, Operations.enable_splice_write
    read_inode: bool  # 0004: Operations.read_inode


STOCK_ENV = "SHADOWFS_STOCK_PYFUSE3"  # set (non-empty): act as on a stock pyfuse3 (tests)


def binding() -> Binding:
    """What the pyfuse3 in use offers, found by looking (every one False when $SHADOWFS_STOCK_PYFUSE3
    is set, so that the tests can run the stock paths on a patched build)."""
    if os.environ.get(STOCK_ENV):
        return Binding(write_memoryview=False, file_range=False, read_inode=False)
    return Binding(write_memoryview=hasattr(pyfuse3.Operations, "write_memoryview"),
                   file_range=hasattr(pyfuse3, "FileRange"),
                   read_inode=hasattr(pyfuse3.Operations, "read_inode"))


def mount_options(fsname: str, *, read_only: bool) -> set[str]:
    """Options for pyfuse3.init: every user sees the mount, the kernel checks modes."""
    options = {f"fsname={fsname}", "subtype=shadowfs", "allow_other", "default_permissions"}
    if read_only:
        options |= {"ro", "nosuid", "nodev"}
    else:
        # a volume protected in place must behave as the directory did: setuid programs
        # and device nodes keep working
        options |= {"suid", "dev"}
    return options


READAHEAD_KIB = 4096


def raise_readahead_after_init(ops: pyfuse3.Operations, mount_point: str) -> None:
    """Arrange for `set_readahead` to run once the kernel has processed FUSE INIT.

    The kernel caps the mount's readahead while it processes the INIT reply,
    so the knob must be set after that reply: `Operations.init` runs just
    before it is sent, and a callback scheduled from there runs after.
    """
    original = ops.init

    def init() -> None:
        original()
        trio.lowlevel.current_trio_token().run_sync_soon(set_readahead, mount_point)

    # Deliberately replaces the method on this one instance (pyfuse3 calls `ops.init()`), which
    # mypy refuses by default because it is usually a mistake; both mounts' Operations use it.
    ops.init = init  # type: ignore[method-assign]


def set_readahead(mount_point: str, kib: int = READAHEAD_KIB) -> None:
    """Let the kernel read ahead `kib` KiB on a FUSE mount (its default is 128 KiB).

    Sequential reads then reach the filesystem as several 1 MiB requests in
    flight instead of one 128 KiB request at a time. The mount's device number
    comes from /proc/self/mountinfo: a stat of the mount point from the process
    that serves it, before its loop runs, would wait on itself.
    """
    point = os.path.abspath(mount_point)
    device = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4 and unescape(fields[4]) == point:
                device = fields[2]  # the newest mount at that point comes last
    if device is None:
        log.warning("cannot set readahead: %s is not in /proc/self/mountinfo", point)
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(f"{kib}\n")
    except OSError as exc:
        log.warning("cannot set readahead of %s (%s): %s", point, device, exc)
