"""The `shadowfs` console script: argparse in front of the daemon's socket.

One job: turn a command line into one request to `<state>/daemon.sock` and
print the reply as a table (or JSON with --json). `shadowfs daemon` is the one
command that does not talk to a daemon: it becomes one.

Invariants:
- Every failure prints exactly one line, `shadowfs: <what is wrong>`, on
  stderr and exits 1; usage errors exit 2 (argparse).
- Paths from the user are made absolute here, so the daemon never sees a path
  relative to some other working directory. Names and sizes are checked here
  too, and again by the daemon.
- Nothing here imports pyfuse3; the daemon module is imported only by
  `shadowfs daemon`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from shadowfs import __version__, statedir
from shadowfs.ipc import frames

REQUEST_TIMEOUT = 300.0


class CliError(Exception):
    """Something the user must fix; printed as `shadowfs: <message>`, exit 1."""


# --- talking to the daemon ----------------------------------------------------------------------


def request(state_dir: str, obj: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send one request to the daemon on `state_dir` and return its successful reply."""
    reply, fds = request_fds(state_dir, obj, timeout)
    frames.close_fds(fds)
    return reply


def request_fds(state_dir: str, obj: dict[str, Any],
                timeout: float = REQUEST_TIMEOUT) -> tuple[dict[str, Any], list[int]]:
    """`request`, and the descriptors that came with the reply (the caller's to close)."""
    path = statedir.socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise CliError(f"shadowfs daemon is not running on state {state_dir}") from None
        except PermissionError:
            raise CliError(f"permission denied: cannot connect to {path}") from None
        try:
            frames.send_frame(sock, {**obj, "id": 1})
            reply, fds = frames.recv_frame(sock)
        except (frames.ChannelClosed, BrokenPipeError, ConnectionResetError):
            raise CliError("shadowfs daemon closed the connection without replying") from None
        except TimeoutError:
            raise CliError(f"no reply from the shadowfs daemon within {timeout:g} s") from None
        except frames.ProtocolError as exc:
            raise CliError(f"bad reply from the shadowfs daemon: {exc}") from None
    if not reply.get("ok", False):
        frames.close_fds(fds)
        raise CliError(str(reply.get("error", "request failed")))
    return {k: v for k, v in reply.items() if k not in ("id", "ok")}, fds


# --- output -------------------------------------------------------------------------------------


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def size(value: Any) -> str:
    return statedir.format_size(int(value)) if isinstance(value, int) else "-"


# --- commands -----------------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from shadowfs.daemon import server  # pyfuse3 and trio only for the daemon itself

    return server.run(args.state, args.mount_root, args.max_snapshots_per_volume)


def cmd_volume_add(args: argparse.Namespace) -> int:
    name = statedir.validate_volume_name(args.name)
    max_bytes = None if args.max_diff_area is None else statedir.parse_size(args.max_diff_area)
    mount = None if args.mount is None else os.path.abspath(args.mount)
    backing = os.path.abspath(args.backing)
    reply = request(state_of(args), {"op": "volume_add", "name": name, "backing": backing, "mount": mount,
                                     "max_diff_area_bytes": max_bytes})
    volume = reply["volume"]
    if args.json:
        print_json(volume)
    else:
        print(f"added volume {volume['name']}: {volume['backing']} mounted at {volume['mount']} "
              f"(max diff area {size(volume['max_diff_area_bytes'])})")
    return 0


def cmd_volume_list(args: argparse.Namespace) -> int:
    volumes = request(state_of(args), {"op": "volume_list"})["volumes"]
    if args.json:
        print_json(volumes)
        return 0
    print_table(["NAME", "BACKING", "MOUNT", "SNAPSHOTS", "DIFF AREA", "MAX", "STATE"],
                [[v["name"], v["backing"], v["mount"], v["snapshots"], size(v["diff_area_bytes"]),
                  size(v["max_diff_area_bytes"]), v.get("state", "-")] for v in volumes])
    return 0


def cmd_volume_remove(args: argparse.Namespace) -> int:
    name = statedir.validate_volume_name(args.name)
    reply = request(state_of(args), {"op": "volume_remove", "name": name, "force": args.force})
    if args.json:
        print_json(reply)
    else:
        extra = f" and {reply['snapshots_deleted']} snapshot(s)" if reply.get("snapshots_deleted") else ""
        print(f"removed volume {name}{extra}")
    return 0


CONTEXTS = ("client_accessible_writers", "client_accessible", "app_rollback", "nas_rollback",
            "backup", "file_share_backup")
AUTO_RELEASE_CONTEXTS = ("backup", "file_share_backup")
NO_WRITER_CONTEXTS = ("client_accessible", "nas_rollback", "file_share_backup")


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    names = [statedir.validate_volume_name(n) for n in args.volumes]
    context = args.context or ("client_accessible" if args.writers is False else "client_accessible_writers")
    if context in AUTO_RELEASE_CONTEXTS:
        raise CliError(f"context {context} is auto-release: its snapshots would be deleted as soon as this "
                       "command exits; use the shadowfs.requester library for backups")
    if args.writers is True and context in NO_WRITER_CONTEXTS:
        raise CliError(f"context {context} does not involve writers; drop --writers")
    obj: dict[str, Any] = {"op": "snapshot_create", "volumes": names, "context": context,
                           "writers": context not in NO_WRITER_CONTEXTS and args.writers is not False}
    if args.freeze_timeout is not None:
        obj["freeze_timeout"] = args.freeze_timeout
    reply = request(state_of(args), obj)
    if args.json:
        print_json(reply)
        return 0
    writers = reply.get("writers", [])
    print(f"created snapshot set {reply['set_id']} at {reply['created']} ({reply.get('context', context)}, "
          f"{len(writers)} writer(s))")
    print_table(["VOLUME", "SNAPSHOT", "PATH"],
                [[s["volume"], s["id"], s["path"]] for s in reply["snapshots"]])
    for writer in writers:
        if not writer.get("ok", True):
            print(f"warning: writer {writer['writer_name']} failed at {writer['event']}: "
                  f"{writer.get('failure')} {writer.get('message', '')}".rstrip(), file=sys.stderr)
    return 0


def cmd_writer_sqlite(args: argparse.Namespace) -> int:
    from shadowfs.vss import sqlite_writer  # trio and the writer library only for the writer itself
    from shadowfs.vss.writer import WriterError

    db = os.path.abspath(args.db)
    if not os.path.isfile(db):
        raise CliError(f"no database file {db}")
    try:
        return sqlite_writer.run(db, state_of(args), args.timeout, args.instance_name)
    except WriterError as exc:
        raise CliError(str(exc)) from None


def cmd_writers(args: argparse.Namespace) -> int:
    writers = request(state_of(args), {"op": "writers", "departed": args.all})["writers"]
    if args.json:
        print_json(writers)
        return 0

    def last(writer: dict[str, Any]) -> str:
        failure = writer.get("last_failure")
        if not failure:
            return "-"
        return f"{failure['event']}: {failure.get('failure') or '-'} {failure.get('message', '')}".strip()

    print_table(["WRITER", "INSTANCE", "INSTANCE ID", "PID", "STATE", "LAST FAILURE"],
                [[w["writer_name"], w["instance_name"] or "-", w["instance_id"],
                  w["pid"] if w.get("connected", True) else "gone", w["state"], last(w)] for w in writers])
    return 0


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    snapshots = request(state_of(args), {"op": "snapshot_list"})["snapshots"]
    if args.json:
        print_json(snapshots)
        return 0
    print_table(["SET", "SNAPSHOT", "VOLUME", "CREATED", "DIFF AREA", "PATH"],
                [[s["set_id"], s["id"], s["volume"], s["created"], size(s["diff_area_bytes"]), s["path"]]
                 for s in snapshots])
    return 0


def cmd_snapshot_delete(args: argparse.Namespace) -> int:
    try:
        wanted = str(uuid.UUID(args.id))
    except ValueError:
        raise CliError(f"invalid snapshot or set id {args.id!r} (expected a UUID)") from None
    reply = request(state_of(args), {"op": "snapshot_delete", "snapshot": wanted})
    if args.json:
        print_json(reply)
    else:
        print(f"deleted {len(reply['deleted'])} snapshot(s), freed {size(reply.get('freed', 0))}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reply = request(state_of(args), {"op": "status"})
    if args.json:
        print_json(reply)
        return 0
    browser = reply.get("browser", {})
    print(f"shadowfs daemon {reply.get('version')} (pid {reply.get('pid')}) "
          f"on state {reply.get('state_dir')}")
    print(f"snapshot browser at {browser.get('mount')}: {browser.get('state', '-')}")
    print_table(["VOLUME", "MOUNT", "STATE", "PID", "RESTARTS", "SNAPSHOTS", "DIFF AREA"],
                [[v["name"], v["mount"], v.get("state", "-"), (v.get("process") or {}).get("pid") or "-",
                  (v.get("process") or {}).get("restarts", "-"), v["snapshots"], size(v["diff_area_bytes"])]
                 for v in reply.get("volumes", [])])
    return 0


# --- parser -------------------------------------------------------------------------------------


def state_of(args: argparse.Namespace) -> str:
    return statedir.resolve_state_dir(getattr(args, "state", None))


def common_options(json_help: str = "print the result as JSON") -> argparse.ArgumentParser:
    """The options every subcommand takes (--state, --json), as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"state directory (default: ${statedir.STATE_ENV}, "
                             f"else {statedir.DEFAULT_STATE_DIR})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()

    parser = argparse.ArgumentParser(prog="shadowfs", parents=[common],
                                     description="VSS-style snapshot sets of Linux directory trees.")
    parser.add_argument("--version", action="version", version=f"shadowfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
            text: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, parents=[common], help=text, description=text)
        child.set_defaults(func=func)
        return child

    daemon = add(commands, "daemon", cmd_daemon, "run the shadowfs daemon in the foreground until SIGTERM")
    daemon.add_argument("--mount-root", metavar="DIR",
                        help=f"where snapshots/ is mounted "
                             f"(default: ${statedir.MOUNT_ROOT_ENV}, else <state>/mnt)")
    daemon.add_argument("--max-snapshots-per-volume", type=int, metavar="N",
                        help="refuse a new snapshot set when a volume already has N snapshots "
                             "(default: $SHADOWFS_MAX_SNAPSHOTS_PER_VOLUME, else 512, as VSS)")

    volume = commands.add_parser("volume", help="add, list or remove protected volumes")
    volumes = volume.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    vadd = add(volumes, "add", cmd_volume_add, "protect a directory tree as a volume")
    vadd.add_argument("name", metavar="NAME", help="volume name: letters, digits, '.', '_', '-' (max 64)")
    vadd.add_argument("backing", metavar="BACKING_DIR", help="the directory tree to protect (ext4)")
    vadd.add_argument("--mount", metavar="PATH",
                      help="where the live mount goes "
                           "(default: over BACKING_DIR itself, protecting it in place)")
    vadd.add_argument("--max-diff-area", metavar="SIZE",
                      help="maximum diff area size, e.g. 512M, 10G, 1.5T (default: 10%% of the backing "
                           "filesystem's size, at least 1G); when full, the oldest snapshot is deleted")
    add(volumes, "list", cmd_volume_list, "list volumes")
    vremove = add(volumes, "remove", cmd_volume_remove, "stop protecting a volume and delete its diff area")
    vremove.add_argument("name", metavar="NAME")
    vremove.add_argument("--force", action="store_true", help="also delete the volume's snapshots")

    snapshot = commands.add_parser("snapshot", help="create, list or delete snapshots")
    snapshots = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")
    screate = add(snapshots, "create", cmd_snapshot_create,
                  "take one snapshot set: every named volume at the same instant")
    screate.add_argument("volumes", metavar="VOLUME", nargs="+")
    screate.add_argument("--writers", dest="writers", action="store_true", default=None,
                         help="freeze the writers whose files lie on these volumes (the default)")
    screate.add_argument("--no-writers", dest="writers", action="store_false",
                         help="take a crash-consistent set without writers")
    screate.add_argument("--context", choices=CONTEXTS,
                         help="snapshot context (default: client_accessible_writers, or client_accessible "
                              "with --no-writers); persistent contexts survive daemon restarts")
    screate.add_argument("--freeze-timeout", type=float, metavar="SECONDS",
                         help="abort the set if a writer does not freeze within this time (default: each "
                              "writer's own, 60 s)")
    add(snapshots, "list", cmd_snapshot_list, "list snapshots")
    sdelete = add(snapshots, "delete", cmd_snapshot_delete, "delete a snapshot, or every snapshot of a set")
    sdelete.add_argument("id", metavar="ID", help="a snapshot id or a snapshot set id")

    add(commands, "status", cmd_status, "show the daemon, its mount processes and volumes")
    writer = commands.add_parser("writer", help="run a writer process for an application")
    writer_kinds = writer.add_subparsers(dest="writer_command", required=True, metavar="KIND")
    sqlite = add(writer_kinds, "sqlite", cmd_writer_sqlite,
                 "run the SQLite writer for one database until SIGTERM (quiesces it at Freeze)")
    sqlite.add_argument("--db", required=True, metavar="PATH", help="the database file")
    sqlite.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="the writer's Freeze-to-Thaw limit (default 60 s, as VSS)")
    sqlite.add_argument("--instance-name", metavar="NAME",
                        help="writer instance name (default: the database's real path)")
    writers = add(commands, "writers", cmd_writers,
                  "list registered writers with their state and last failure")
    writers.add_argument("--all", action="store_true", help="also list writers that disconnected lately")
    from shadowfs.cli import backup_cmds  # imported here: backup_cli imports this module

    backup_cmds.add_parsers(commands)  # backup, restore, media list / verify, diff
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.state = getattr(args, "state", None)
    try:
        return int(args.func(args))
    except (CliError, statedir.ConfigError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"shadowfs: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shadowfs: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"shadowfs: {exc}", file=sys.stderr)
        return 1
