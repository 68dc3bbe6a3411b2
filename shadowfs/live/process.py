"""The live mount process of one volume: ``python -m shadowfs.live.process ...``.

One job: start one volume's live mount for the daemon. It opens the backing
directory before mounting (so it can mount over it, in place), prepares
``<backing>/.shadowfs/graveyard``, lets `live.control.MountService` open the
diff area and everything on it, mounts `live.ops.LiveOperations`, and runs the
control channel until the daemon ends it.

Invariants:
- The backing directory is opened, and checked to be a filesystem whose
  objects open by inode number, before anything is mounted over it.
- On SIGTERM, SIGINT or the end of the control channel the mount is unmounted
  and the process exits 0; a start that fails exits 1 with one logged line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

import pyfuse3
import trio

from shadowfs import fuse_adapter
from shadowfs.capture.graveyard import prepare_graveyard
from shadowfs.diffarea.schema import GRAVEYARD, HIDDEN_DIR
from shadowfs.errors import StartupError
from shadowfs.linux import mounts, syscalls
from shadowfs.live.control import MountService
from shadowfs.live.ops import CACHE_TIMEOUT, IN_PLACE_CACHE_TIMEOUT, LiveOperations

log = logging.getLogger(__name__)

MAX_FUSE_TASKS = 512  # requests parked at a held gate must not starve reads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shadowfs.live.process",
                                     description="Live mount of one shadowfs volume.")
    parser.add_argument("--control-fd", type=int, required=True,
                        help="connected Unix socket to the daemon")
    parser.add_argument("--volume", required=True, help="volume name")
    parser.add_argument("--backing", required=True, help="backing directory")
    parser.add_argument("--mount", required=True, help="mount point (the backing directory: in place)")
    parser.add_argument("--diff-area", required=True, help="diff area directory (LMDB environment)")
    parser.add_argument("--max-diff-area", type=int, default=0,
                        help="bytes the diff area may hold before the oldest snapshot goes (0: no limit)")
    return parser.parse_args(argv)


def _open_backing(backing: str, mount: str) -> int:
    if mounts.is_fuse_mount(mount):
        raise StartupError(f"{mount} already has a FUSE mount (left behind by a dead mount "
                           "process?); unmount it first")
    if mount != backing and mounts.is_fuse_mount(backing):
        raise StartupError(f"backing directory {backing} is itself a FUSE mount")
    if not os.path.isdir(mount):
        raise StartupError(f"mount point {mount} is not a directory")
    try:
        root_fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(f"cannot open backing directory {backing}: {exc.strerror}") from exc
    try:
        syscalls.check_backing_fs(backing)
        _check_open_by_ino(root_fd, backing)
    except ValueError as exc:
        os.close(root_fd)
        raise StartupError(str(exc)) from exc
    return root_fd


def _check_open_by_ino(root_fd: int, backing: str) -> None:
    """Raise ValueError unless an inode number alone reaches the object (tmpfs, e.g., does not)."""
    root = os.fstat(root_fd)
    try:
        fd = syscalls.open_by_ino(root_fd, root.st_ino, os.O_PATH)
    except OSError as exc:
        raise ValueError(f"{backing}: objects cannot be opened by inode number on this filesystem "
                         f"({exc.strerror}); shadowfs needs ext4") from exc
    try:
        found = os.fstat(fd)
    finally:
        os.close(fd)
    if (found.st_dev, found.st_ino) != (root.st_dev, root.st_ino):
        raise ValueError(f"{backing}: opening by inode number reached another object; shadowfs needs ext4")


def _control_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"--control-fd {fd} is not a usable socket: {exc.strerror}") from exc
    if sock.family != socket.AF_UNIX:
        raise StartupError(f"--control-fd {fd} is not a Unix socket")
    return sock


def _graveyard(root_fd: int) -> int:
    try:
        return prepare_graveyard(root_fd)
    except OSError as exc:
        raise StartupError(f"cannot prepare {HIDDEN_DIR.decode()}/{GRAVEYARD.decode()} "
                           f"in the backing directory: {exc.strerror}") from exc


async def _fuse_main() -> None:
    await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)


def run(args: argparse.Namespace) -> int:
    backing = os.path.abspath(args.backing)
    mount = os.path.abspath(args.mount)
    os.umask(0)  # modes come from the caller's request (its umask is applied by live.ops)
    control = _control_socket(args.control_fd)
    root_fd = _open_backing(backing, mount)
    graveyard_fd = _graveyard(root_fd)
    try:
        service = MountService.open(args.volume, mount, args.max_diff_area, control, root_fd,
                                    graveyard_fd, args.diff_area)
        try:
            service.reconcile_graveyard()
            timeout = IN_PLACE_CACHE_TIMEOUT if mount == backing else CACHE_TIMEOUT
            ops = LiveOperations(root_fd, service.planner, service.graveyard, service.gate,
                                 cache_timeout=timeout)
            try:
                fuse_adapter.raise_readahead_after_init(ops, mount)
                pyfuse3.init(ops, mount, fuse_adapter.mount_options(f"shadowfs-{args.volume}",
                                                                     read_only=False))
            except RuntimeError as exc:
                raise StartupError(f"cannot mount {mount}: {exc}") from exc
            try:
                trio.run(service.main, _fuse_main, pyfuse3.terminate)
            finally:
                pyfuse3.close(unmount=True)
                ops.close()
                log.info("unmounted %s", mount)
        finally:
            service.close()
    finally:
        os.close(graveyard_fd)
        os.close(root_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format=f"%(asctime)s shadowfs-mount[{args.volume}] %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc if exc.errno != errno.ENOTCONN else f"{exc} (a dead FUSE mount?)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
