"""`shadowfs exec [--no-writers] [--keep] VOLUME... -- COMMAND [ARG...]`: run a command on a
consistent snapshot set, each volume's snapshot at the volume's own path (what `vshadow -exec`
is on Windows).

One job: take a set (writers frozen unless --no-writers), enter a private mount namespace,
mount each volume's snapshot read-only over the volume's path there (one
`browser.expose_process` per volume, node ids from the backing inode numbers, so that an
unchanged file shows the same inode number, size and times in every snapshot), run COMMAND
with SHADOWFS_SET_ID and SHADOWFS_SNAPSHOT_<VOLUME> set, and exit with its status. The set is
deleted afterwards unless --keep.

Invariants:
- COMMAND runs only once every volume shows its snapshot; outside this process and its
  children nothing changes: applications keep writing to the live volumes meanwhile.
- The mounts go away with the processes that serve them, whatever happens to COMMAND; the set
  is deleted (without --keep) also when a mount could not be made. A set the daemon could not
  take fails the command before anything runs (exit 1, as `snapshot create`).
- Exit status: COMMAND's; 128+N if a signal N ended it; 127 if it could not be started.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import add_command, state_of
from shadowfs.errors import ChildFailed, CliError
from shadowfs.ipc.client import request, request_fds
from shadowfs.ipc.vss_messages import CreatedSnapshot, SnapshotCreateRequest

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def env_name(volume: str) -> str:
    """SHADOWFS_SNAPSHOT_<VOLUME>: the volume's name upper-cased, other than [A-Z0-9] as '_'."""
    return "SHADOWFS_SNAPSHOT_" + re.sub(r"[^A-Z0-9]", "_", volume.upper())


def split_command(words: list[str]) -> tuple[list[str], list[str]]:
    """(volumes, command) from `VOLUME... -- COMMAND...`."""
    if "--" not in words:
        raise CliError("put -- between the volumes and the command: shadowfs exec VOLUME... -- COMMAND")
    at = words.index("--")
    volumes, command = words[:at], words[at + 1:]
    if not volumes:
        raise CliError("name at least one volume before --")
    if not command:
        raise CliError("give the command to run after --")
    return [statedir.validate_volume_name(v) for v in volumes], command


class Exposed:
    """The expose processes of one exec, started in this process's mount namespace."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, state: str, snapshot: CreatedSnapshot, mount: str) -> None:
        volume = snapshot["volume"]
        reply, fds = request_fds(state, {"op": "volume_backing", "name": volume})
        if len(fds) != 1 or reply.get("volume") != volume:
            for fd in fds:
                os.close(fd)
            raise ChildFailed(f"volume {volume}: the daemon gave no backing directory")
        ready_read, ready_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "shadowfs.browser.expose_process", "--mount", mount,
                 "--diff-area", statedir.diff_area_path(state, volume), "--seq", str(snapshot["seq"]),
                 "--backing-fd", str(fds[0]), "--ready-fd", str(ready_write)],
                pass_fds=(fds[0], ready_write), stdin=subprocess.DEVNULL)
        finally:
            os.close(fds[0])
            os.close(ready_write)
        self.processes.append((volume, process))
        try:
            if not _ready(ready_read, process):
                raise ChildFailed(f"volume {volume}: its snapshot could not be mounted at {mount} "
                                  "(see the lines above)")
        finally:
            os.close(ready_read)

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(fd: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether `process` wrote its ready line (False if it exited or timed out first)."""
    import select

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable:
            return os.read(fd, 64).startswith(b"ready")
        if process.poll() is not None:
            return False
    return False


def run_command(command: list[str], env: dict[str, str]) -> int:
    try:
        result = subprocess.run(command, env=env, check=False)
    except OSError as exc:
        print(f"shadowfs: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


def cmd_exec(args: argparse.Namespace) -> int:
    from shadowfs.linux.namespace import enter_private_mount_namespace

    volumes, command = split_command(args.words)
    state = state_of(args)
    mounts = {v["name"]: v["mount"] for v in request(state, {"op": "volume_list"})["volumes"]}
    unknown = [v for v in volumes if v not in mounts]
    if unknown:
        raise CliError(f"unknown volume {unknown[0]}")
    create: SnapshotCreateRequest = {"op": "snapshot_create", "volumes": volumes,
                                     "context": "client_accessible" if args.no_writers
                                     else "client_accessible_writers",
                                     "writers": not args.no_writers}
    taken = request(state, create)
    exposed = Exposed()
    try:
        enter_private_mount_namespace()
        for snapshot in taken["snapshots"]:
            exposed.start(state, snapshot, mounts[snapshot["volume"]])
        env = dict(os.environ, SHADOWFS_SET_ID=taken["set_id"])
        for snapshot in taken["snapshots"]:
            env[env_name(snapshot["volume"])] = snapshot["id"]
        status = run_command(command, env)
    finally:
        exposed.stop()
        if not args.keep:
            request(state, {"op": "snapshot_delete", "snapshot": taken["set_id"], "force": True})
    if args.keep:
        print(f"shadowfs: kept snapshot set {taken['set_id']}", file=sys.stderr)
    return status


def add_parser(commands: Subcommands) -> None:
    run = add_command(commands, "exec", cmd_exec,
                      "run a command on a snapshot set, each volume's snapshot at the volume's own path")
    run.add_argument("--no-writers", action="store_true", help="a crash-consistent set, writers not frozen")
    run.add_argument("--keep", action="store_true", help="keep the set afterwards (default: delete it)")
    run.add_argument("words", nargs=argparse.REMAINDER, metavar="VOLUME... -- COMMAND [ARG...]")
