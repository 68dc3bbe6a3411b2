"""The live mount process of one volume: ``python -m shadowfs.live.process ...``.

One job: start one volume's live mount and keep it until told to stop. It
opens the backing directory before mounting (so it can mount over it, in
place), prepares ``<backing>/.shadowfs/graveyard``, lets
`live.control.MountService` open the diff area and everything on it, opens
the change watcher and marks what changed since protection last held
(`live.lapse`), mounts `live.ops.LiveOperations`, and serves daemons one
after another: the one that started it (``--control-fd``), then any that
connects to ``--listen`` (design §9.1).

A process started with ``--fuse-fd`` takes over the FUSE connection of a dead
predecessor instead of mounting (`live.handoff`, design §9.2): the mount was
never gone, so there was no lapse to look for; the predecessor's watcher
(``--watch-fd``) kept every change that bypassed the mount meanwhile.

Invariants:
- The backing directory is opened, and checked to be a filesystem whose
  objects open by inode number, before anything is mounted over it (a
  take-over inherits the descriptor instead: the path is under the mount).
- The watcher is open, and the catch-up scan done, before the mount accepts
  any request.
- The end of a daemon's control channel changes nothing; a `stop` request,
  SIGTERM or SIGINT unmount, record the end of protection and exit 0; a mount
  taken away from under the process ends it with `EXIT_MOUNT_GONE`; a start
  that fails exits 1 with one logged line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import stat
import sys

import pyfuse3
import trio

from shadowfs import fuse_adapter, logsetup
from shadowfs.capture.graveyard import prepare_graveyard
from shadowfs.diffarea.schema import GRAVEYARD, HIDDEN_DIR
from shadowfs.errors import StartupError, TakeOverError
from shadowfs.linux import mounts, syscalls
from shadowfs.linux.fanotify import ChangeWatch
from shadowfs.live import handoff
from shadowfs.live.control import MountService
from shadowfs.live.lapse import LapseGuard
from shadowfs.live.ops import CACHE_TIMEOUT, IN_PLACE_CACHE_TIMEOUT, LiveOperations
from shadowfs.live.protection import ProtectionRecord

log = logging.getLogger(__name__)

MAX_FUSE_TASKS = 512  # requests parked at a held gate must not starve reads
EXIT_MOUNT_GONE = 3  # the mount was taken away from under the process: mount the volume again


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shadowfs.live.process",
                                     description="Live mount of one shadowfs volume.")
    parser.add_argument("--control-fd", type=int, default=None,
                        help="connected Unix socket to the daemon that started this process")
    parser.add_argument("--listen", default=None,
                        help="abstract Unix socket name (after its leading @) where later daemons connect")
    parser.add_argument("--volume", required=True, help="volume name")
    parser.add_argument("--backing", required=True, help="backing directory")
    parser.add_argument("--mount", required=True, help="mount point (the backing directory: in place)")
    parser.add_argument("--diff-area", required=True, help="diff area directory (LMDB environment)")
    parser.add_argument("--protection", required=True, help="the volume's protection record file")
    parser.add_argument("--blocks-on-volume", action="store_true",
                        help="a diff area created now keeps blocks.dat in <backing>/.shadowfs/")
    parser.add_argument("--max-diff-area", type=int, default=0,
                        help="bytes the diff area may hold before the oldest snapshot goes (0: no limit)")
    takeover = parser.add_argument_group("taking over from a dead mount process (live.handoff)")
    takeover.add_argument("--fuse-fd", type=int, default=None,
                          help="the FUSE connection to serve instead of mounting")
    takeover.add_argument("--backing-fd", type=int, default=None,
                          help="the backing root (the path is under the mount)")
    takeover.add_argument("--watch-fd", type=int, default=None, help="the change watcher to go on with")
    takeover.add_argument("--predecessor-pid", type=int, action="append", default=[],
                          help="a process whose changes went through the mount (repeatable)")
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
    """Raise ValueError unless an inode number alone reaches the backing root (through the descriptor
    the mount process keeps, as every later reopen does)."""
    root = os.fstat(root_fd)
    try:
        fd = syscalls.open_by_ino(root_fd, root.st_ino, os.O_PATH)
    except OSError as exc:
        raise ValueError(f"{backing}: objects cannot be opened by inode number on this filesystem "
                         f"({exc.strerror}); shadowfs protects trees on ext4, XFS and btrfs") from exc
    try:
        found = os.fstat(fd)
    finally:
        os.close(fd)
    if (found.st_dev, found.st_ino) != (root.st_dev, root.st_ino):
        raise ValueError(f"{backing}: opening by inode number reached another object")


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


def _listener(name: str | None) -> socket.socket | None:
    """Bind the abstract socket where a later daemon connects; None (with a warning) if in use."""
    if name is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(b"\0" + name.encode())
        sock.listen(4)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on @{name}: {exc.strerror} (another mount process of this "
                           "volume is running?)") from exc
    sock.setblocking(False)
    return sock


def _backing_from_fd(fd: int, backing: str) -> int:
    """The inherited backing root of a take-over, checked to be the volume's backing directory."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise StartupError(f"--backing-fd {fd}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"--backing-fd {fd} is not a directory")
    os.set_inheritable(fd, False)
    return fd


def _open_watch(root_fd: int, backing: str, inherited: int | None) -> ChangeWatch | None:
    try:
        if inherited is not None:
            os.set_inheritable(inherited, False)
            return ChangeWatch.from_fd(inherited, root_fd, backing)
        return ChangeWatch.open(root_fd, backing)
    except OSError as exc:
        log.warning("changes that bypass the live mount cannot be watched (%s); only a scan after "
                    "each lapse finds them", exc)
        return None


def run(args: argparse.Namespace) -> int:
    """Protect the volume until stopped; 0 after a stop, `EXIT_MOUNT_GONE` if the mount was taken away."""
    backing = os.path.abspath(args.backing)
    mount = os.path.abspath(args.mount)
    taking_over = args.fuse_fd is not None
    if taking_over and not handoff.can_take_over():
        raise StartupError("--fuse-fd given, but this pyfuse3 cannot take over a FUSE connection")
    os.umask(0)  # modes come from the caller's request (its umask is applied by live.ops)
    control = _control_socket(args.control_fd) if args.control_fd is not None else None
    listener = _listener(args.listen)
    if taking_over:
        if args.backing_fd is None:
            raise StartupError("--fuse-fd needs --backing-fd (the backing directory is under the mount)")
        root_fd = _backing_from_fd(args.backing_fd, backing)
    else:
        root_fd = _open_backing(backing, mount)
    graveyard_fd = _graveyard(root_fd)
    record = ProtectionRecord(args.protection)
    watch = _open_watch(root_fd, backing, args.watch_fd if taking_over else None)
    try:
        service = MountService.open(args.volume, mount, args.max_diff_area, control, root_fd,
                                    graveyard_fd, args.diff_area, blocks_on_volume=args.blocks_on_volume)
        try:
            service.listener = listener
            service.reconcile_graveyard()
            guard = LapseGuard(args.volume, service.area, service.committer, root_fd, backing, watch, record)
            guard.ignore_pids.update(args.predecessor_pid)
            guard.report = service.report_damage
            service.guard = guard
            if not taking_over:
                # the mount is not there yet: whatever changed since protection last held is found now
                guard.catch_up(record.lapse_start())
            record.begin()
            return _serve(args, service, root_fd, mount, backing, taking_over)
        finally:
            service.close()
    finally:
        if watch is not None:
            watch.close()
        if listener is not None:
            listener.close()
        os.close(graveyard_fd)
        os.close(root_fd)


def _serve(args: argparse.Namespace, service: MountService, root_fd: int, mount: str, backing: str,
           taking_over: bool) -> int:
    timeout = IN_PLACE_CACHE_TIMEOUT if mount == backing else CACHE_TIMEOUT
    ops = LiveOperations(root_fd, service.planner, service.graveyard, service.gate, cache_timeout=timeout)
    log.info("pyfuse3 %s: %s", pyfuse3.__version__, fuse_adapter.binding())
    options = fuse_adapter.mount_options(f"shadowfs-{args.volume}", read_only=False)
    try:
        if not taking_over:  # a taken-over mount keeps the readahead its first process set
            fuse_adapter.raise_readahead_after_init(ops, mount)
        if taking_over:
            handoff.take_over(ops, args.fuse_fd, options)
            service.took_over = True
            log.info("took over the FUSE connection of %s from pid %s", mount,
                     ", ".join(map(str, args.predecessor_pid)) or "a dead process")
        else:
            pyfuse3.init(ops, mount, options)
    except (RuntimeError, OSError, TakeOverError) as exc:
        raise StartupError(f"cannot mount {mount}: {exc}") from exc
    service.handoff_fds = _handoff_fds(service, root_fd)
    try:
        trio.run(service.main, _fuse_main, pyfuse3.terminate)
    finally:
        pyfuse3.close(unmount=not taking_over and not service.gone)
        if taking_over and not service.gone:
            mounts.unmount(mount, lazy=True)  # libfuse knows only /dev/fd/N: unmount the path here
        ops.close()
        log.info("unmounted %s", mount)
    return EXIT_MOUNT_GONE if service.gone else 0


def _handoff_fds(service: MountService, root_fd: int) -> list[tuple[str, int]]:
    """What a daemon keeps so that a successor can go on where this process stops."""
    fds: list[tuple[str, int]] = []
    if handoff.can_take_over():
        fds.append(("fuse", handoff.session_fd()))
    if service.guard is not None and service.guard.watch is not None:
        fds.append(("watch", service.guard.watch.fileno()))
    fds.append(("backing", root_fd))
    return fds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.configure(f"shadowfs-mount[{args.volume}]")
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
