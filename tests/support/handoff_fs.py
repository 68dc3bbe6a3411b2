"""A tiny pyfuse3 file system for the take-over tests (tests/mount/test_handoff.py).

    python tests/support/handoff_fs.py mount --mount PATH --control-fd N [--block-slow]
    python tests/support/handoff_fs.py MODE --fuse-fd M --control-fd N

`mount` is the first process: it mounts PATH and sends its FUSE descriptor
(`handoff.session_fd`) with its "mounted" event. A MODE serves the inherited
descriptor M of that mount: `take-over` with `handoff.take_over` (init on
/dev/fd/M, resume, resend), `resume-only` without the resend, `init-only`
without the resume either (libfuse then answers EIO to everything).

The files, each read and written with direct_io so that every call reaches
the process, and with the inode number as file handle, so that a file opened
under one process is served by the next:

- `who`: "<label> pid=<pid> reads=<n>", n counting the reads from offset 0 this process served
- `data`: read and write, held in this process's memory
- `slow`: "<label>"; with --block-slow its read reports "in_slow_read" and never ends

Events go to the control socket (SOCK_SEQPACKET), one JSON object a message:
"mounted" (with the descriptor), "ready" (times from CLOCK_MONOTONIC: the
first line run, imports done, serving; whether ops.init ran), "in_slow_read".
"""

# ruff: noqa: E402  (the clock is read before the imports, whose cost the tests measure apart)

from __future__ import annotations

import time

STARTED = time.monotonic()  # only the interpreter's own start-up came before

import argparse
import errno
import json
import os
import socket
import stat
import sys
from typing import Any

import pyfuse3
import trio

from shadowfs.live import handoff

IMPORTED = time.monotonic()

OPTIONS = frozenset({"fsname=handoff-test", "subtype=handofftest", "default_permissions", "allow_other"})
ROOT, WHO, DATA, SLOW = pyfuse3.ROOT_INODE, 2, 3, 4
NAMES = {b"who": WHO, b"data": DATA, b"slow": SLOW}
SIZE = 4096  # what getattr says of `who` and `slow`; with direct_io the process decides what a read returns


class HandoffFs(pyfuse3.Operations):
    """The three files above, served by one process."""

    def __init__(self, label: str, control: socket.socket, block_slow: bool) -> None:
        super().__init__()
        self.label = label
        self.control = control
        self.block_slow = block_slow
        self.reads = 0
        self.data = bytearray()
        self.init_called = False

    def init(self) -> None:
        self.init_called = True

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        if inode == ROOT:
            entry.st_mode = stat.S_IFDIR | 0o755
            entry.st_nlink = 2
        elif inode in (WHO, DATA, SLOW):
            entry.st_mode = stat.S_IFREG | 0o644
            entry.st_size = len(self.data) if inode == DATA else SIZE
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry.st_ino = inode
        entry.attr_timeout = entry.entry_timeout = 0
        return entry

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent != ROOT or name not in NAMES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(NAMES[name])

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in (WHO, DATA, SLOW):
            raise pyfuse3.FUSEError(errno.EISDIR if inode == ROOT else errno.ENOENT)
        info = pyfuse3.FileInfo(fh=inode)
        info.direct_io = True
        return info

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == WHO:
            self.reads += off == 0
            text = f"{self.label} pid={os.getpid()} reads={self.reads}\n".encode()
        elif fh == SLOW:
            if self.block_slow:
                event(self.control, "in_slow_read")
                await trio.sleep_forever()
            text = f"{self.label}\n".encode()
        else:
            text = bytes(self.data)
        return text[off:off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh != DATA:
            raise pyfuse3.FUSEError(errno.EACCES)
        if len(self.data) < off:
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(buf)] = buf
        return len(buf)

    async def release(self, fh: int) -> None:
        pass


def event(control: socket.socket, name: str, fds: list[int] | None = None, **fields: Any) -> None:
    message = json.dumps({"event": name, "pid": os.getpid(), **fields}).encode()
    socket.send_fds(control, [message], fds or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="handoff_fs.py")
    parser.add_argument("mode", choices=["mount", "take-over", "resume-only", "init-only"])
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--mount", help="mount point (mode mount)")
    parser.add_argument("--fuse-fd", type=int, help="the inherited FUSE descriptor (the other modes)")
    parser.add_argument("--label", default="p1")
    parser.add_argument("--block-slow", action="store_true")
    args = parser.parse_args(argv)

    control = socket.socket(fileno=args.control_fd)
    ops = HandoffFs(args.label, control, args.block_slow)
    if args.mode == "mount":
        pyfuse3.init(ops, args.mount, set(OPTIONS))
        event(control, "mounted", [handoff.session_fd()])
    elif args.mode == "take-over":
        handoff.take_over(ops, args.fuse_fd, OPTIONS)
    else:
        pyfuse3.init(ops, f"/dev/fd/{args.fuse_fd}", set(OPTIONS))
        if args.mode == "resume-only":
            pyfuse3.resume()
    event(control, "ready", started=STARTED, imported=IMPORTED, serving=time.monotonic(),
          init_called=ops.init_called)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=args.mode == "mount")
    return 0


if __name__ == "__main__":
    sys.exit(main())
