"""`python -m shadowfs.browser.expose_process`: serve one snapshot at one path until told to stop.

One job: mount `browser.exposed` for snapshot `--seq` of the volume whose
diff area is `--diff-area` and whose backing root is the inherited
`--backing-fd`, at `--mount` (read-only), say so on `--ready-fd`, and serve
until SIGTERM or SIGINT; then unmount. `shadowfs exec` starts one per volume
inside its private mount namespace, where the mount covers the volume's own
path for the command it runs.

Invariants:
- Nothing is mounted unless the snapshot exists: a missing one is an error
  line on stderr and exit status 1, with "ready" never written.
- The ready line is written only after the kernel has accepted the mount, so
  a command started on it sees the snapshot, never the path underneath.
- The mount goes away with the process, also when the process fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import pyfuse3
import trio

from shadowfs import fuse_adapter, logsetup
from shadowfs.browser.exposed import ExposedOperations
from shadowfs.browser.volumes import close_one_snapshot, open_one_snapshot
from shadowfs.diffarea.schema import Seq
from shadowfs.errors import DiffAreaError

log = logging.getLogger(__name__)

FSNAME = "shadowfs-snapshot"


async def _serve(ops: ExposedOperations, ready_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        async def fuse() -> None:
            await pyfuse3.main(min_tasks=2)
            nursery.cancel_scope.cancel()

        nursery.start_soon(fuse)
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def serve(mount: str, diff_area: str, seq: Seq, backing_fd: int, ready_fd: int | None) -> int:
    try:
        view = open_one_snapshot(diff_area, seq, backing_fd)
    except DiffAreaError as exc:
        log.error("%s", exc)
        return 1
    ops = ExposedOperations(view)
    try:
        try:
            pyfuse3.init(ops, mount, fuse_adapter.mount_options(FSNAME, read_only=True))
        except (RuntimeError, OSError) as exc:
            log.error("cannot mount %s: %s", mount, exc)
            return 1
        try:
            trio.run(_serve, ops, ready_fd)
        finally:
            pyfuse3.close(unmount=True)
    finally:
        ops.close()
        close_one_snapshot(view)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowfs.browser.expose_process",
                                     description="serve one shadowfs snapshot, read-only, at one path")
    parser.add_argument("--mount", required=True, help="where to mount the snapshot")
    parser.add_argument("--diff-area", required=True, help="the volume's diff area directory")
    parser.add_argument("--seq", type=int, required=True, help="the snapshot's sequence number")
    parser.add_argument("--backing-fd", type=int, required=True,
                        help="inherited descriptor of the backing root")
    parser.add_argument("--ready-fd", type=int, help="inherited descriptor to write 'ready' to once mounted")
    args = parser.parse_args(argv)
    logsetup.configure("shadowfs-expose")
    return serve(os.path.abspath(args.mount), args.diff_area, Seq(args.seq), args.backing_fd, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
