"""`shadowfs blame PATH [--since SNAPSHOT]`: who changed a path, and when, across its volume's snapshots.

One job: find the volume PATH lies in (its live mount, its backing directory,
or one of its snapshots in the browser), look PATH up in every snapshot of
that volume and in the live mount (`snapshot.blame.resolve`), and list the
changes the diff area recorded for what it named (`snapshot.blame.changes`),
oldest first, each with its author when recorded (design §3.14): uid, gid,
pid, command name, request and time, plus the user and group names this
machine has for the ids. For a directory, the changes of its entries are
listed too. ``--since`` keeps the changes made after that snapshot.

A path in no volume, a path that names nothing in the volume nor in any of its
snapshots, and a ``--since`` snapshot of another volume are `CliError` (exit
2). The engines are imported inside the handler.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from shadowfs import statedir
from shadowfs.cli.common import add_command, find_snapshot, state_of
from shadowfs.cli.output import print_json, print_table
from shadowfs.cli.who import name_items
from shadowfs.errors import ChildFailed, CliError
from shadowfs.ipc.client import request
from shadowfs.ipc.messages import SnapshotEntry, VolumeEntry

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def _absolute(path: str) -> str:
    """`path` made absolute, its directories' symlinks resolved (not its own last component)."""
    absolute = os.path.abspath(path)
    head, tail = os.path.split(absolute)
    return os.path.join(os.path.realpath(head), tail) if tail else absolute


def volume_of(path: str, volumes: list[VolumeEntry], snapshots: list[SnapshotEntry]) -> tuple[str, str]:
    """(volume name, path relative to its root) of an absolute `path` in a volume's live mount,
    backing directory or one of its snapshots; CliError when it is in none."""
    places = [(v["name"], v["mount"]) for v in volumes] + [(v["name"], v["backing"]) for v in volumes]
    places += [(s["volume"], s["path"]) for s in snapshots]
    for name, root in sorted(places, key=lambda place: -len(place[1])):  # the deepest root wins
        if statedir.is_within(path, root):
            return name, "" if path == root else os.path.relpath(path, root)
    where = ", ".join(sorted({v["mount"] for v in volumes})) or "no volume is protected"
    raise CliError(f"{path} is not inside a volume ({where})")


def cmd_blame(args: argparse.Namespace) -> int:
    """The recorded changes of PATH, oldest first, with who made them."""
    from shadowfs.diffarea.area import DiffArea
    from shadowfs.diffarea.schema import BackingIno, Seq
    from shadowfs.snapshot import blame
    from shadowfs.snapshot.tree import INO_MASK

    state = state_of(args)
    path = _absolute(args.path)
    all_snapshots = request(state, {"op": "snapshot_list"})["snapshots"]
    volumes = request(state, {"op": "volume_list"})["volumes"]
    name, rel = volume_of(path, volumes, all_snapshots)
    snapshots = sorted((s for s in all_snapshots if s["volume"] == name), key=lambda s: s["seq"])
    since: SnapshotEntry | None = None
    if args.since is not None:
        since = find_snapshot(all_snapshots, args.since, name)
        if since["volume"] != name:
            raise CliError(f"snapshot {args.since} is of volume {since['volume']}, not of {name}")
    items: list[dict[str, Any]] = []
    if snapshots:  # no snapshot: nothing was ever captured
        try:
            root_ino = BackingIno(os.lstat(snapshots[0]["path"]).st_ino & INO_MASK)
        except OSError as exc:
            raise ChildFailed(f"snapshot {snapshots[0]['id']} is not readable at {snapshots[0]['path']}: "
                              f"{exc.strerror}") from exc
        live = next(v["mount"] for v in volumes if v["name"] == name)
        subjects = blame.resolve(rel, [s["path"] for s in snapshots] + [live], root_ino)
        if not subjects.inos:
            raise CliError(f"{path} names nothing in volume {name} nor in any of its snapshots")
        area = DiffArea.open(statedir.diff_area_path(state, name), readonly=True)
        try:
            items = blame.changes(area, subjects, None if since is None else Seq(int(since["seq"])))
        finally:
            area.close()
        name_items(items)
    if args.json:
        print_json({"volume": name, "path": rel, "since": None if since is None else since["id"],
                    "changes": items})
        return 0
    print_table(["SINCE", "UNTIL", "TIME", "USER", "COMMAND", "OP", "WHAT", "PATH"],
                [_row(item) for item in items])
    return 0


def _what(item: dict[str, Any]) -> str:
    """What changed, in a word or two: the object's data or attributes, or which way its name went."""
    if item["object"] == "entry":
        return "name added" if item.get("before") == "absent" else "name changed"
    if item["object"] == "damage":
        return "changed outside the mount"
    return "data" if item.get("data") else "born" if item.get("before") == "nonexistent" else "attributes"


def _row(item: dict[str, Any]) -> list[str]:
    """One change as table cells; "-" where its author is not known."""
    who = item.get("who")
    until = item["until"] if item["until"] == "live" else item["until"][:8]
    head = [item["since"][:8], until]
    tail = [_what(item), item["path"] or "/"]
    if who is None:
        return head + [item.get("found", "-"), "-", "-", "-"] + tail
    user = f"{who.get('user', '')}({who['uid']})"
    return head + [who["time"][:19].replace("T", " "), user, f"{who.get('comm', '?')}[{who['pid']}]",
                   who["op"]] + tail


def add_parser(commands: Subcommands) -> None:
    blame = add_command(commands, "blame", cmd_blame,
                        "who changed a path, and when, across its volume's snapshots")
    blame.add_argument("path", metavar="PATH",
                       help="a file or directory inside a volume (live or in a snapshot)")
    blame.add_argument("--since", metavar="SNAPSHOT",
                       help="only changes made after this snapshot (id or set id, or a unique prefix)")
