"""`shadowfs backup`: a VSS backup job of volumes onto backup media.

One job: argparse in front of `backup.job.run_backup`: the registered writers'
components on the volumes, a snapshot set, the image (with the BCD and WMDs),
BackupComplete; then the set is deleted (``--keep-snapshot`` keeps it, so that
the next incremental or differential can read what changed straight from the
diff areas). With no writers it is a plain crash-consistent backup.

Exit 1 when a component failed (the image is kept); a job refused before it
starts (no base image, an unknown volume) is `BackupRefused`, exit 2. The
engines are imported inside the handler: building the parser for any other
command costs nothing of them. Progress goes to stderr: a bar on a terminal,
JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import JSON_PROGRESS_HELP, add_command, media_of, state_of
from shadowfs.cli.output import print_json, size
from shadowfs.cli.progress import Progress
from shadowfs.errors import EXIT_OK, EXIT_PROBLEMS, CliError

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

# `media.BACKUP_TYPES`, spelled out so that building the parser does not import the media
# package (tests/test_errors.py checks that the two agree)
BACKUP_TYPES = ("full", "incremental", "differential", "log", "copy")


def cmd_backup(args: argparse.Namespace) -> int:
    """Run a VSS backup job (`run_backup`): writers, a snapshot set, the image, BackupComplete."""
    from shadowfs import media
    from shadowfs.backup.job import run_backup

    names = [statedir.validate_volume_name(n) for n in args.volumes]
    if len(set(names)) != len(names):
        raise CliError("a volume is named twice")
    store, state = media_of(args), state_of(args)
    progress = Progress("backup", json_lines=args.json)
    outcome = run_backup(state, store, names, args.type, base_id=args.base, keep_snapshot=args.keep_snapshot,
                         with_writers=args.writers, progress=progress)
    progress.done()
    summary = media.open_image(store, outcome.image).summary()
    result = {"image": outcome.image, "set_id": outcome.set_id, "type": args.type, "files": summary["files"],
              "bytes": summary["bytes"], "components": outcome.components, "base": summary["base"],
              "fast_path": outcome.fast_path, "direct": outcome.direct, "live_volumes": outcome.live_volumes,
              "snapshot_kept": bool(args.keep_snapshot), "warnings": outcome.warnings}
    failed = [c for c in outcome.components if not c.get("succeeded", True)]
    if args.json:
        print_json(result)
    else:
        how = f" (changes from the diff area of {', '.join(outcome.fast_path)})" if outcome.fast_path else ""
        print(f"image {outcome.image}: {args.type} backup of set {outcome.set_id}, "
              f"{result['files']} file(s), {size(result['bytes'])}{how}")
        for component in outcome.components:
            state_text = "ok" if component.get("succeeded", True) else "FAILED: " + "; ".join(
                component.get("failures", []))
            print(f"  {component['writer']} {component['component']} ({component['type']}): {state_text}")
        for warning in outcome.warnings:
            print(f"  warning: {warning}")
    return EXIT_PROBLEMS if failed else EXIT_OK


def add_parser(commands: Subcommands) -> None:
    types = ", ".join(BACKUP_TYPES)
    back = add_command(commands, "backup", cmd_backup,
                       "back up volumes from a new snapshot set onto backup media",
                       json_help=JSON_PROGRESS_HELP, media=True)
    back.add_argument("volumes", metavar="VOLUME", nargs="+")
    back.add_argument("--type", choices=BACKUP_TYPES, default="full", help=f"backup type: {types}")
    back.add_argument("--base", metavar="IMAGE", help="the image an incremental/differential builds on "
                      "(default: the newest suitable image of the same volumes)")
    back.add_argument("--keep-snapshot", action="store_true",
                      help="keep the snapshot set, so the next incremental reads changes from the diff area")
    back.add_argument("--no-writers", dest="writers", action="store_false",
                      help="take a crash-consistent set without freezing writers")
