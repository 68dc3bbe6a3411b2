"""`shadowfs volume add | list | remove`: the protected directory trees.

One job: check names and sizes here (and the daemon checks them again), make
paths absolute, send one request, print the reply. A bad name or size is a
`ConfigError` before anything is sent (exit 2); what the daemon refuses (an
existing volume, a backing directory in the way, a backing directory that
processes hold, unless `--force`) comes back as its own class.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import add_command, add_group, state_of
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.ipc.client import request
from shadowfs.ipc.messages import VolumeSetRequest

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def cmd_volume_add(args: argparse.Namespace) -> int:
    name = statedir.validate_volume_name(args.name)
    max_bytes = None if args.max_diff_area is None else statedir.parse_size(args.max_diff_area)
    mount = None if args.mount is None else os.path.abspath(args.mount)
    backing = os.path.abspath(args.backing)
    reply = request(state_of(args), {"op": "volume_add", "name": name, "backing": backing, "mount": mount,
                                     "max_diff_area_bytes": max_bytes, "force": args.force,
                                     "blocks": args.blocks})
    volume = reply["volume"]
    if args.json:
        print_json(volume)
    else:
        print(f"added volume {volume['name']}: {volume['backing']} mounted at {volume['mount']} "
              f"(max diff area {size(volume['max_diff_area_bytes'])}, "
              f"block file {'on the volume' if volume['blocks'] == 'volume' else 'in the state directory'})")
    return 0


def cmd_volume_set(args: argparse.Namespace) -> int:
    name = statedir.validate_volume_name(args.name)
    max_bytes = statedir.parse_size(args.max_diff_area)
    volume_set: VolumeSetRequest = {"op": "volume_set", "name": name, "max_diff_area_bytes": max_bytes}
    volume = request(state_of(args), volume_set)["volume"]
    if args.json:
        print_json(volume)
    else:
        print(f"volume {volume['name']}: max diff area {size(volume['max_diff_area_bytes'])} "
              "(the oldest unheld snapshots are deleted now if it holds more)")
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


def add_parser(commands: Subcommands) -> None:
    volumes = add_group(commands, "volume", "add, list or remove protected volumes", "volume_command")
    vadd = add_command(volumes, "add", cmd_volume_add, "protect a directory tree as a volume")
    vadd.add_argument("name", metavar="NAME", help="volume name: letters, digits, '.', '_', '-' (max 64)")
    vadd.add_argument("backing", metavar="BACKING_DIR",
                      help="the directory tree to protect (on ext4, XFS or btrfs; on btrfs, one subvolume)")
    vadd.add_argument("--mount", metavar="PATH",
                      help="where the live mount goes "
                           "(default: over BACKING_DIR itself, protecting it in place)")
    vadd.add_argument("--max-diff-area", metavar="SIZE",
                      help="maximum diff area size, e.g. 512M, 10G, 1.5T (default: 10%% of the backing "
                           "filesystem's size, at least 1G); when full, the oldest unheld snapshot "
                           "is deleted")
    place = vadd.add_mutually_exclusive_group()
    place.add_argument("--blocks-on-volume", dest="blocks", action="store_const", const="volume",
                       help="keep the diff area's captured block bytes in BACKING_DIR/.shadowfs/ on the "
                            "volume's own filesystem, where XFS and btrfs capture by reflink (the default "
                            "when the state directory is on another filesystem)")
    place.add_argument("--blocks-in-state", dest="blocks", action="store_const", const="state",
                       help="keep them beside the diff area in the state directory (the default when it "
                            "is on the volume's filesystem)")
    vadd.add_argument("--force", action="store_true",
                      help="add even when processes have files, working directories or mappings open "
                           "in BACKING_DIR (refused otherwise, naming them; the daemon logs them)")
    add_command(volumes, "list", cmd_volume_list, "list volumes")
    vset = add_command(volumes, "set", cmd_volume_set, "change a volume's settings")
    vset.add_argument("name", metavar="NAME")
    vset.add_argument("--max-diff-area", metavar="SIZE", required=True,
                      help="the diff area's new maximum, e.g. 512M, 10G (vssadmin resize shadowstorage)")
    vremove = add_command(volumes, "remove", cmd_volume_remove,
                          "stop protecting a volume and delete its diff area")
    vremove.add_argument("name", metavar="NAME")
    vremove.add_argument("--force", action="store_true", help="also delete the volume's snapshots")
