"""`shadowfs versions PATH`: every distinct version of a path across its volume's snapshots, then now.

One job: find the volume whose live path holds PATH (absolute, or relative
to the current directory), list that volume's snapshots oldest first, and
print what `snapshot.versions.versions` finds: one line per version (the
snapshots it is seen in, type, size, mtime, inode, content hash or symlink
target, names that entered and left a directory, and where to open it), or
JSON. Each snapshot is read through the snapshot browser; the diff area is
opened read-only, only to avoid hashing bytes that cannot have changed. A
path outside every volume, or neither in a snapshot nor live, is a
`CliError` (exit 2). The engines are imported inside the handler.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from shadowfs import statedir
from shadowfs.cli.common import add_command, state_of, volume_of_path
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.errors import CliError, DiffAreaError
from shadowfs.ipc.client import request

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def _seen_in(item: dict[str, Any]) -> str:
    if item.get("live"):
        return "live" + (" (as before)" if item["same_as_previous"] else "")
    snapshots = item["snapshots"]
    first = f"{snapshots[0]['created']} {snapshots[0]['snapshot'][:8]}"
    return first + (f" +{len(snapshots) - 1} later" if len(snapshots) > 1 else "")


def _content(item: dict[str, Any]) -> str:
    if item["state"] != "present":
        return str(item.get("error", "-"))
    if "sha256" in item:
        return f"sha256 {item['sha256'][:16]}"
    if "target" in item:
        return f"-> {item['target']}"
    if item["type"] == "dir":
        return f"+{len(item['entered'])} -{len(item['left'])} names"
    return "-"


def cmd_versions(args: argparse.Namespace) -> int:
    from shadowfs.diffarea.area import DiffArea
    from shadowfs.diffarea.schema import Seq
    from shadowfs.snapshot.versions import Source, versions

    state = state_of(args)
    volume, rel = volume_of_path(request(state, {"op": "volume_list"})["volumes"], args.path)
    snapshots = sorted((s for s in request(state, {"op": "snapshot_list"})["snapshots"]
                        if s["volume"] == volume["name"]), key=lambda s: s["seq"])
    sources = [Source(s["path"], Seq(s["seq"]), {"set": s["set_id"], "snapshot": s["id"],
                                                  "created": s["created"]}) for s in snapshots]
    sources.append(Source(volume["mount"], None, {}))
    area: DiffArea | None = None
    if snapshots:
        try:
            area = DiffArea.open(statedir.diff_area_path(state, volume["name"]), readonly=True)
        except (OSError, DiffAreaError):
            area = None  # every file version is hashed instead
    try:
        items = versions(sources, rel, area)
    finally:
        if area is not None:
            area.close()
    live_path = os.path.join(volume["mount"], rel) if rel else volume["mount"]
    if all(item["state"] == "absent" for item in items):
        raise CliError(f"{live_path}: not in volume {volume['name']} and in none of its "
                       f"{len(snapshots)} snapshot(s)")
    if args.json:
        print_json({"volume": volume["name"], "path": rel, "live_path": live_path, "versions": items})
        return 0
    print(f"{live_path} (volume {volume['name']}, {len(snapshots)} snapshot(s)): {len(items)} version(s)")
    print_table(["SEEN IN", "STATE", "TYPE", "SIZE", "MTIME", "INODE", "CONTENT", "OPEN AT"],
                [[_seen_in(item), item["state"], item.get("type", "-"),
                  size(item["size"]) if "size" in item else "-", item.get("mtime", "-")[:19],
                  item.get("inode", "-"), _content(item), item["path"] if item["state"] == "present" else "-"]
                 for item in items])
    return 0


def add_parser(commands: Subcommands) -> None:
    parser = add_command(commands, "versions", cmd_versions,
                         "every distinct version of a path in its volume's snapshots, then the live one")
    parser.add_argument("path", metavar="PATH",
                        help="a path in a protected volume (absolute, or relative to the current directory)")
