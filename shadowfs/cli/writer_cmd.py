"""`shadowfs writer sqlite|run|manifests` (run a writer, list manifests) and `shadowfs writers`.

One job: the writer side of the VSS service on the command line. `writer
sqlite` and `writer run` (an express writer from a manifest, vss §16) are the
commands besides `daemon` that import trio (inside their handlers); a manifest
that cannot be used is `ManifestError` (exit 2, before anything connects), a
writer the daemon refuses is `WriterError` (exit 2), a daemon that is not
running `DaemonNotRunning` (exit 3).
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


def cmd_writer_run(args: argparse.Namespace) -> int:
    from shadowfs.vss import express_manifest  # no trio: --check needs none

    manifest = express_manifest.load(args.manifest)
    if args.check:
        summary = manifest.summary()
        if args.json:
            print_json(summary)
            return 0
        print(f"{manifest.name} (class {manifest.class_id}, instance {manifest.instance_id}"
              f"{', ' + repr(manifest.instance_name) if manifest.instance_name else ''}): manifest is valid")
        for component in manifest.template.components:
            specs = ", ".join(f"{s.path}/{s.filespec}{' (recursive)' if s.recursive else ''}"
                              for s in component.all_file_specs)
            print(f"  component {component.full_path} ({component.type.value}): {specs or 'no files'}")
        for command in manifest.commands.values():
            print(f"  {command.event.value} ({command.timeout:g} s): {command.command}")
        return 0
    from shadowfs.vss import express_writer  # trio and the writer library only for the writer itself

    return express_writer.run(manifest, state_of(args))


def cmd_writer_manifests(args: argparse.Namespace) -> int:
    from shadowfs.vss import express_manifest

    shipped = express_manifest.shipped()
    if args.json:
        print_json([{"name": name, "path": path} for name, path in shipped.items()])
        return 0
    print_table(["NAME", "PATH"], [[name, path] for name, path in shipped.items()])
    return 0


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
    run = add_command(kinds, "run", cmd_writer_run,
                      "run an express writer (a shell command per event, from a TOML manifest) until SIGTERM")
    run.add_argument("--manifest", required=True, metavar="FILE",
                     help="the writer's manifest (`shadowfs writer manifests` lists those shipped)")
    run.add_argument("--check", action="store_true",
                     help="only check the manifest and print the writer it declares")
    add_command(kinds, "manifests", cmd_writer_manifests,
                "list the express writer manifests shipped with shadowfs (copy one, then edit it)")
    writers = add_command(commands, "writers", cmd_writers,
                          "list registered writers with their state and last failure")
    writers.add_argument("--all", action="store_true", help="also list writers that disconnected lately")
