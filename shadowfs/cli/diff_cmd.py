"""`shadowfs diff A B`: what changed between two snapshots of one volume.

One job: find the two snapshots (ids, or set ids with ``--volume``) in the
daemon's list, scan the volume's diff area between them (read-only) and print
the path-level changes (`snapshot.diff.diff_snapshots`). Ids that are not
UUIDs, unknown snapshots and snapshots in the wrong order are `CliError`
(exit 2). The engines are imported inside the handler.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import JSON_PROGRESS_HELP, add_command, resolve_id, state_of
from shadowfs.cli.output import print_json
from shadowfs.errors import ChildFailed, CliError
from shadowfs.ipc.client import request
from shadowfs.ipc.messages import SnapshotEntry

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

MARKS = {"created": "+", "deleted": "-", "renamed": "R", "linked": "L", "unlinked": "U", "modified": "M"}


def _find_snapshot(snapshots: list[SnapshotEntry], ident: str, volume: str | None) -> SnapshotEntry:
    wanted = resolve_id(ident, [s["id"] for s in snapshots] + [s["set_id"] for s in snapshots])
    found = [s for s in snapshots if s["id"] == wanted]
    if not found:
        found = [s for s in snapshots if s["set_id"] == wanted and (volume is None or s["volume"] == volume)]
    if not found:
        raise CliError(f"no snapshot {ident}" + (f" of volume {volume}" if volume else ""))
    if len(found) > 1:
        raise CliError(f"set {ident} has several volumes: choose one with --volume")
    return found[0]


def cmd_diff(args: argparse.Namespace) -> int:
    """What changed from snapshot A to the newer snapshot B of the same volume."""
    from shadowfs.diffarea.area import DiffArea
    from shadowfs.diffarea.schema import Seq
    from shadowfs.snapshot import changes
    from shadowfs.snapshot.diff import diff_snapshots
    from shadowfs.snapshot.tree import SourceTree

    state = state_of(args)
    snapshots = request(state, {"op": "snapshot_list"})["snapshots"]
    a, b = (_find_snapshot(snapshots, ident, args.volume) for ident in (args.a, args.b))
    if a["volume"] != b["volume"]:
        raise CliError(f"snapshots of different volumes ({a['volume']}, {b['volume']})")
    if a["seq"] >= b["seq"]:
        raise CliError("snapshot A must be older than snapshot B")
    area = DiffArea.open(statedir.diff_area_path(state, a["volume"]), readonly=True)
    try:
        with SourceTree(a["path"]) as tree_a, SourceTree(b["path"]) as tree_b:
            found = changes.scan(area, Seq(int(a["seq"])), Seq(int(b["seq"])))
            root = tree_a.meta("")
            if root is None:  # the daemon lists it, but the snapshot browser does not show it
                raise ChildFailed(f"snapshot {a['id']} is not readable at {a['path']}")
            items = diff_snapshots(found, changes.PathReader(tree_a), changes.PathReader(tree_b), root.ino)
    finally:
        area.close()
    if args.json:
        print_json({"volume": a["volume"], "from": a["id"], "to": b["id"], "changes": items})
        return 0
    for item in items:
        extra = []
        if "from" in item:
            extra.append(f"from {item['from']}")
        if "data" in item:
            extra.append(f"data {sum(n for _, n in item['data'])} bytes in {len(item['data'])} range(s)")
        if "attributes" in item:
            extra.append("attributes " + ",".join(item["attributes"]))
        print(f"{MARKS[item['change']]} {item['path'] or '/'}" + (f"  ({'; '.join(extra)})" if extra else ""))
    return 0


def add_parser(commands: Subcommands) -> None:
    diff = add_command(commands, "diff", cmd_diff, "what changed between two snapshots of a volume",
                       json_help=JSON_PROGRESS_HELP)
    diff.add_argument("a", metavar="SNAPSHOT_A", help="the older snapshot (id or set id, or a unique prefix)")
    diff.add_argument("b", metavar="SNAPSHOT_B", help="the newer snapshot (id or set id, or a unique prefix)")
    diff.add_argument("--volume", metavar="NAME", help="the volume, when A and B are set ids")
