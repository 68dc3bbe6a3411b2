"""`shadowfs status`: the daemon, its snapshot browser, and each volume's mount process.

One job: one `status` request, printed as a summary and a table (or JSON);
with `--wait`, asked again until the daemon is ready (every volume protected,
snapshots readable) or the timeout passes (then `DaemonStarting`, exit 4); a
daemon not running at all is waited for NOT_RUNNING_GRACE seconds only (one
just started in the background may not hold its lock yet), then exit 3.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import add_command, state_of
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.errors import CallTimeout, DaemonNotRunning, DaemonStarting
from shadowfs.ipc.client import request
from shadowfs.ipc.messages import StatusReply

WAIT_INTERVAL = 0.1
NOT_RUNNING_GRACE = 5.0  # how long --wait waits for a daemon that holds no lock yet

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def _wait_ready(state_dir: str, timeout: float) -> StatusReply:
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            reply = request(state_dir, {"op": "status"})
            if reply.get("ready"):
                return reply
        except DaemonStarting:
            pass
        except DaemonNotRunning:
            # `shadowfs daemon &` just run may not hold its lock yet: a few seconds' grace
            if time.monotonic() >= min(deadline, start + NOT_RUNNING_GRACE):
                raise
        if time.monotonic() >= deadline:
            raise DaemonStarting(f"the shadowfs daemon on state {state_dir} was not ready within "
                                 f"{timeout:g} s")
        time.sleep(WAIT_INTERVAL)


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = state_of(args)
    reply = _wait_ready(state_dir, args.timeout) if args.wait else request(state_dir, {"op": "status"})
    if args.json:
        print_json(reply)
        return 0
    browser = reply["browser"]
    readiness = "ready" if reply.get("ready") else "starting (volumes not all protected yet)"
    print(f"shadowfs daemon {reply['version']} (pid {reply['pid']}) on state {reply['state_dir']}: "
          f"{readiness}")
    print(f"snapshot browser at {browser['mount']}: {browser.get('state', '-')}")
    rows: list[list[object]] = []
    for v in reply["volumes"]:
        process = v["process"]
        rows.append([v["name"], v["mount"], v["state"], process and process["pid"] or "-",
                     process["restarts"] if process else "-", v["snapshots"], size(v["diff_area_bytes"])])
    print_table(["VOLUME", "MOUNT", "STATE", "PID", "RESTARTS", "SNAPSHOTS", "DIFF AREA"], rows)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state_dir = state_of(args)
    reply = request(state_dir, {"op": "shutdown", "unprotect": args.unprotect})
    if not args.no_wait:
        deadline = time.monotonic() + args.timeout
        while statedir.daemon_holding_lock(state_dir) is not None:
            if time.monotonic() >= deadline:
                raise CallTimeout(f"the shadowfs daemon on state {state_dir} did not stop within "
                                  f"{args.timeout:g} s")
            time.sleep(WAIT_INTERVAL)
    if args.json:
        print_json(reply)
    elif args.unprotect:
        print("daemon stopped; every volume is unprotected (its mount removed) until the daemon runs again")
    else:
        print("daemon stopped; volumes stay protected by their mount processes")
    return 0


def add_parser(commands: Subcommands) -> None:
    status = add_command(commands, "status", cmd_status, "show the daemon, its mount processes and volumes")
    status.add_argument("--wait", action="store_true",
                        help="wait until every volume is protected and snapshots are readable")
    status.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long --wait waits (default 60)")
    stop = add_command(commands, "stop", cmd_stop,
                       "stop the daemon; volumes stay protected unless --unprotect")
    stop.add_argument("--unprotect", action="store_true",
                      help="also stop every volume's mount process: the backing directories are then "
                           "unprotected (for maintenance; changes made meanwhile are found and marked "
                           "at the next start)")
    stop.add_argument("--no-wait", action="store_true", help="do not wait for the daemon to exit")
    stop.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                      help="how long to wait for the daemon to exit (default 120)")
