"""`shadowfs status`: the daemon, its snapshot browser, and each volume's mount process.

One job: one `status` request, printed as a summary and a table (or JSON).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shadowfs.cli.common import add_command, state_of
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.ipc.client import request

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def cmd_status(args: argparse.Namespace) -> int:
    reply = request(state_of(args), {"op": "status"})
    if args.json:
        print_json(reply)
        return 0
    browser = reply["browser"]
    print(f"shadowfs daemon {reply['version']} (pid {reply['pid']}) on state {reply['state_dir']}")
    print(f"snapshot browser at {browser['mount']}: {browser.get('state', '-')}")
    rows: list[list[object]] = []
    for v in reply["volumes"]:
        process = v["process"]
        rows.append([v["name"], v["mount"], v["state"], process and process["pid"] or "-",
                     process["restarts"] if process else "-", v["snapshots"], size(v["diff_area_bytes"])])
    print_table(["VOLUME", "MOUNT", "STATE", "PID", "RESTARTS", "SNAPSHOTS", "DIFF AREA"], rows)
    return 0


def add_parser(commands: Subcommands) -> None:
    add_command(commands, "status", cmd_status, "show the daemon, its mount processes and volumes")
