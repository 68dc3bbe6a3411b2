"""`shadowfs diff A B` / `shadowfs diff A --live`: what changed between two snapshots of one
volume, or between a snapshot and the volume as it is now.

One job: find the snapshots (ids, or set ids with ``--volume``) in the
daemon's list, scan the volume's diff area between them (read-only) and print
the path-level changes (`snapshot.diff.diff_snapshots`). With ``--live`` the
newer side is the live mount and the scan runs up to now: it sees what went
through the live mount, and refuses (as for two snapshots) when something
changed while protection had lapsed. Ids that are not UUIDs, unknown
snapshots and snapshots in the wrong order are `CliError` (exit 2). The
engines are imported inside the handler.

Each change says who made it when the diff area recorded that (design §3.14):
``who`` (uid, gid, pid, comm, op, time, and the user and group names this
machine has for the ids), and ``modified_by`` when the object's content was
first changed by someone else than its entry; plain text adds a short
``by ...`` phrase.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import JSON_PROGRESS_HELP, add_command, find_snapshot, state_of
from shadowfs.cli.output import print_json
from shadowfs.cli.progress import Progress
from shadowfs.cli.who import name_items, phrase
from shadowfs.errors import ChildFailed, CliError
from shadowfs.ipc.client import request

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

MARKS = {"created": "+", "deleted": "-", "renamed": "R", "linked": "L", "unlinked": "U", "modified": "M"}


def cmd_diff(args: argparse.Namespace) -> int:
    """What changed from snapshot A to the newer snapshot B of the same volume."""
    from shadowfs.diffarea.area import DiffArea
    from shadowfs.diffarea.schema import HIDDEN_DIR, Seq
    from shadowfs.snapshot import changes
    from shadowfs.snapshot.diff import diff_snapshots
    from shadowfs.snapshot.tree import SourceTree

    state = state_of(args)
    if (args.b is None) == (not args.live):
        raise CliError("give the newer snapshot B, or --live to compare with the volume as it is now")
    snapshots = request(state, {"op": "snapshot_list"})["snapshots"]
    a = find_snapshot(snapshots, args.a, args.volume)
    if args.live:
        volumes = {v["name"]: v for v in request(state, {"op": "volume_list"})["volumes"]}
        to_id, to_path, to_seq = "live", volumes[a["volume"]]["mount"], None
    else:
        b = find_snapshot(snapshots, args.b, args.volume)
        if a["volume"] != b["volume"]:
            raise CliError(f"snapshots of different volumes ({a['volume']}, {b['volume']})")
        if a["seq"] >= b["seq"]:
            raise CliError("snapshot A must be older than snapshot B")
        to_id, to_path, to_seq = b["id"], b["path"], Seq(int(b["seq"]))
    area = DiffArea.open(statedir.diff_area_path(state, a["volume"]), readonly=True)
    try:
        with SourceTree(a["path"]) as tree_a, SourceTree(to_path, hidden=[os.fsdecode(HIDDEN_DIR)]) as tree_b:
            found = changes.scan(area, Seq(int(a["seq"])), to_seq, authors=True)
            root = tree_a.meta("")
            if root is None:  # the daemon lists it, but the snapshot browser does not show it
                raise ChildFailed(f"snapshot {a['id']} is not readable at {a['path']}")
            progress = Progress("diff", json_lines=args.json)
            items = diff_snapshots(found, changes.PathReader(tree_a), changes.PathReader(tree_b), root.ino,
                                   progress=progress)
            progress.done()
    finally:
        area.close()
    name_items(items)
    if args.json:
        print_json({"volume": a["volume"], "from": a["id"], "to": to_id, "changes": items})
        return 0
    for item in items:
        extra = []
        if "from" in item:
            extra.append(f"from {item['from']}")
        if "data" in item:
            extra.append(f"data {sum(n for _, n in item['data'])} bytes in {len(item['data'])} range(s)")
        if "attributes" in item:
            extra.append("attributes " + ",".join(item["attributes"]))
        if "who" in item:
            extra.append(phrase(item["who"]))
        if "modified_by" in item:
            extra.append("modified " + phrase(item["modified_by"]))
        print(f"{MARKS[item['change']]} {item['path'] or '/'}" + (f"  ({'; '.join(extra)})" if extra else ""))
    return 0


def add_parser(commands: Subcommands) -> None:
    diff = add_command(commands, "diff", cmd_diff, "what changed between two snapshots of a volume",
                       json_help=JSON_PROGRESS_HELP)
    diff.add_argument("a", metavar="SNAPSHOT_A", help="the older snapshot (id or set id, or a unique prefix)")
    diff.add_argument("b", metavar="SNAPSHOT_B", nargs="?",
                      help="the newer snapshot (id or set id, or a unique prefix)")
    diff.add_argument("--live", action="store_true", help="compare SNAPSHOT_A with the volume as it is now")
    diff.add_argument("--volume", metavar="NAME", help="the volume, when A and B are set ids")
