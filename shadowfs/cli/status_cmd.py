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
    browser = reply.get("browser", {})
    print(f"shadowfs daemon {reply.get('version')} (pid {reply.get('pid')}) "
          f"on state {reply.get('state_dir')}")
    print(f"snapshot browser at {browser.get('mount')}: {browser.get('state', '-')}")
    print_table(["VOLUME", "MOUNT", "STATE", "PID", "RESTARTS", "SNAPSHOTS", "DIFF AREA"],
                [[v["name"], v["mount"], v.get("state", "-"), (v.get("process") or {}).get("pid") or "-",
                  (v.get("process") or {}).get("restarts", "-"), v["snapshots"], size(v["diff_area_bytes"])]
                 for v in reply.get("volumes", [])])
    return 0


def add_parser(commands: Subcommands) -> None:
    add_command(commands, "status", cmd_status, "show the daemon, its mount processes and volumes")
