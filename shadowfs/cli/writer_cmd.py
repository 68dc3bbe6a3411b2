"""`shadowfs writer sqlite` (run a writer) and `shadowfs writers` (list the registered ones).

One job: the writer side of the VSS service on the command line. `writer
sqlite` is the one command besides `daemon` that imports trio (inside its
handler); a writer the daemon refuses is `WriterError` (exit 2), a daemon that
is not running `DaemonNotRunning` (exit 3).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from shadowfs.cli.common import add_command, add_group, state_of
from shadowfs.cli.output import print_json, print_table
from shadowfs.errors import CliError
from shadowfs.ipc.client import request
from shadowfs.ipc.vss_messages import WriterDescription

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def cmd_writer_sqlite(args: argparse.Namespace) -> int:
    from shadowfs.vss import sqlite_writer  # trio and the writer library only for the writer itself

    db = os.path.abspath(args.db)
    if not os.path.isfile(db):
        raise CliError(f"no database file {db}")
    return sqlite_writer.run(db, state_of(args), args.timeout, args.instance_name)


def cmd_writers(args: argparse.Namespace) -> int:
    writers = request(state_of(args), {"op": "writers", "departed": args.all})["writers"]
    if args.json:
        print_json(writers)
        return 0

    def last(writer: WriterDescription) -> str:
        failure = writer.get("last_failure")
        if not failure:
            return "-"
        return f"{failure['event']}: {failure.get('failure') or '-'} {failure.get('message', '')}".strip()

    print_table(["WRITER", "INSTANCE", "INSTANCE ID", "PID", "STATE", "LAST FAILURE"],
                [[w["writer_name"], w["instance_name"] or "-", w["instance_id"],
                  w["pid"] if w.get("connected", True) else "gone", w["state"], last(w)] for w in writers])
    return 0


def add_parser(commands: Subcommands) -> None:
    kinds = add_group(commands, "writer", "run a writer process for an application", "writer_command",
                      metavar="KIND")
    sqlite = add_command(kinds, "sqlite", cmd_writer_sqlite,
                         "run the SQLite writer for one database until SIGTERM (quiesces it at Freeze)")
    sqlite.add_argument("--db", required=True, metavar="PATH", help="the database file")
    sqlite.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="the writer's Freeze-to-Thaw limit (default 60 s, as VSS)")
    sqlite.add_argument("--instance-name", metavar="NAME",
                        help="writer instance name (default: the database's real path)")
    writers = add_command(commands, "writers", cmd_writers,
                          "list registered writers with their state and last failure")
    writers.add_argument("--all", action="store_true", help="also list writers that disconnected lately")
