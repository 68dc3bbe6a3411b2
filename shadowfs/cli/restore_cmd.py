"""`shadowfs restore`: an image and its chain, to a directory or back into the volumes.

One job: argparse in front of `restore.job.run_restore`: to ``--to DIR/<volume>/``,
or without ``--to`` into each volume's live mount (the original place);
PreRestore / PostRestore with the writers of the image's BCDs, ``--new-target``.
Exit 1 when a writer failed PostRestore; an unknown image is `MediaNotFound`,
exit 2. The engines are imported inside the handler.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from shadowfs.cli.common import JSON_PROGRESS_HELP, add_command, media_of, state_of
from shadowfs.cli.output import print_json, size
from shadowfs.cli.progress import Progress
from shadowfs.errors import EXIT_OK, EXIT_PROBLEMS, CliError
from shadowfs.ipc.client import request

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def _new_targets(items: list[str] | None) -> list[tuple[str, str]]:
    targets = []
    for item in items or []:
        source, sep, dest = item.partition("=")
        if not sep or not os.path.isabs(source) or not os.path.isabs(dest):
            raise CliError(f"--new-target {item!r}: expected /SOURCE/DIR=/NEW/DIR (absolute paths)")
        targets.append((os.path.normpath(source), os.path.normpath(dest)))
    return targets


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore an image (and its chain) to --to DIR, or to each volume's live mount."""
    from shadowfs import media
    from shadowfs.restore.job import run_restore

    store = media_of(args)
    new_targets = _new_targets(args.new_target)
    image = media.open_image(store, args.image)
    targets = None
    if args.to is None:
        volumes = {v["name"]: v for v in request(state_of(args), {"op": "volume_list"})["volumes"]}
        missing = sorted(set(image.info.volume_names) - set(volumes))
        if missing:
            raise CliError(f"volume(s) {', '.join(missing)} of image {image.id} are not protected here: "
                           "give --to DIR")
        targets = {name: volumes[name]["mount"] for name in image.info.volume_names}
    total = sum(int(media.open_image(store, i).info.stats.get("records", 0)) for i in image.info.chain)
    total += int(image.info.stats.get("records", 0))
    progress = Progress("restore", json_lines=args.json, total=total or None)
    result, writer_failures = run_restore(
        state_of(args), store, image.id, None if args.to is None else os.path.abspath(args.to),
        targets=targets, volumes=args.volume or None, new_targets=new_targets, with_writers=args.writers,
        progress=progress)
    progress.done()
    out = {"image": result.image, "chain": result.chain, "targets": result.targets, "files": result.files,
           "bytes": result.bytes, "removed": result.removed, "warnings": result.warnings,
           "writer_failures": writer_failures}
    if args.json:
        print_json(out)
    else:
        print(f"restored image {result.image} (chain of {len(result.chain)}): {result.files} file(s), "
              f"{size(result.bytes)}, {result.removed} removed")
        for volume, target in sorted(result.targets.items()):
            print(f"  {volume} -> {target}")
        for failure in writer_failures:
            print(f"  {failure}")
    return EXIT_PROBLEMS if writer_failures else EXIT_OK


def add_parser(commands: Subcommands) -> None:
    rest = add_command(commands, "restore", cmd_restore, "restore an image and its chain",
                       json_help=JSON_PROGRESS_HELP, media=True)
    rest.add_argument("--image", required=True, metavar="ID")
    rest.add_argument("--to", metavar="DIR", help="restore under DIR/<volume>/ (default: into each volume)")
    rest.add_argument("--volume", action="append", metavar="NAME",
                      help="restore only this volume (repeatable)")
    rest.add_argument("--new-target", action="append", metavar="/DIR=/NEW",
                      help="restore writer components' files under /DIR to /NEW instead (AddNewTarget; "
                           "repeatable)")
    rest.add_argument("--no-writers", dest="writers", action="store_false",
                      help="restore without PreRestore/PostRestore to the image's writers")
