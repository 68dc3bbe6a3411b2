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

from shadowfs import __version__, config, ipc

REQUEST_TIMEOUT = 300.0


class CliError(Exception):
    """Something the user must fix; printed as `shadowfs: <message>`, exit 1."""


# --- talking to the daemon ----------------------------------------------------------------------


def request(state_dir: str, obj: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send one request to the daemon on `state_dir` and return its successful reply."""
    path = config.socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise CliError(f"shadowfs daemon is not running on state {state_dir}") from None
        except PermissionError:
            raise CliError(f"permission denied: cannot connect to {path}") from None
        try:
            ipc.send_frame(sock, {**obj, "id": 1})
            reply, fds = ipc.recv_frame(sock)
        except (ipc.ChannelClosed, BrokenPipeError, ConnectionResetError):
            raise CliError("shadowfs daemon closed the connection without replying") from None
        except TimeoutError:
            raise CliError(f"no reply from the shadowfs daemon within {timeout:g} s") from None
        except ipc.ProtocolError as exc:
            raise CliError(f"bad reply from the shadowfs daemon: {exc}") from None
    ipc.close_fds(fds)
    if not reply.get("ok", False):
        raise CliError(str(reply.get("error", "request failed")))
    return {k: v for k, v in reply.items() if k not in ("id", "ok")}


# --- output -------------------------------------------------------------------------------------


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def size(value: Any) -> str:
    return config.format_size(int(value)) if isinstance(value, int) else "-"


# --- commands -----------------------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from shadowfs import daemon  # pyfuse3 and trio only for the daemon itself

    return daemon.run(args.state, args.mount_root)


def cmd_volume_add(args: argparse.Namespace) -> int:
    name = config.validate_volume_name(args.name)
    max_bytes = None if args.max_diff_area is None else config.parse_size(args.max_diff_area)
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
    name = config.validate_volume_name(args.name)
    reply = request(state_of(args), {"op": "volume_remove", "name": name, "force": args.force})
    if args.json:
        print_json(reply)
    else:
        extra = f" and {reply['snapshots_deleted']} snapshot(s)" if reply.get("snapshots_deleted") else ""
        print(f"removed volume {name}{extra}")
    return 0


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    names = [config.validate_volume_name(n) for n in args.volumes]
    reply = request(state_of(args), {"op": "snapshot_create", "volumes": names})
    if args.json:
        print_json(reply)
        return 0
    print(f"created snapshot set {reply['set_id']} at {reply['created']}")
    print_table(["VOLUME", "SNAPSHOT", "PATH"],
                [[s["volume"], s["id"], s["path"]] for s in reply["snapshots"]])
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
    return config.resolve_state_dir(getattr(args, "state", None))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"state directory (default: ${config.STATE_ENV}, "
                             f"else {config.DEFAULT_STATE_DIR})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON")

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
                             f"(default: ${config.MOUNT_ROOT_ENV}, else <state>/mnt)")

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
    add(snapshots, "list", cmd_snapshot_list, "list snapshots")
    sdelete = add(snapshots, "delete", cmd_snapshot_delete, "delete a snapshot, or every snapshot of a set")
    sdelete.add_argument("id", metavar="ID", help="a snapshot id or a snapshot set id")

    add(commands, "status", cmd_status, "show the daemon, its mount processes and volumes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.state = getattr(args, "state", None)
    try:
        return int(args.func(args))
    except (CliError, config.ConfigError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"shadowfs: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shadowfs: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"shadowfs: {exc}", file=sys.stderr)
        return 1
