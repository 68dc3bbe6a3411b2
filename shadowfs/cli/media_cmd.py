"""`shadowfs media list | verify`: what is on backup media, and whether it is sound. No daemon needed.

One job: argparse in front of `media.list_images` and `media.verify`.
`verify` exits 1 when anything is damaged (each problem printed); media or an
image that is not there is `MediaNotFound`, exit 2.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shadowfs.cli.common import JSON_PROGRESS_HELP, add_command, add_group, media_of
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.cli.progress import Progress
from shadowfs.errors import EXIT_OK, EXIT_PROBLEMS

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def cmd_media_list(args: argparse.Namespace) -> int:
    """List the complete images on the media."""
    from shadowfs import media

    images = [image.summary() for image in media.list_images(media_of(args))]
    if args.json:
        print_json(images)
        return EXIT_OK
    print_table(["IMAGE", "TYPE", "CREATED", "VOLUMES", "FILES", "BYTES", "BASE"],
                [[i["id"], i["type"], i["created"], ",".join(i["volumes"]), i["files"],
                  size(i["bytes"]), i["base"] or "-"] for i in images])
    return EXIT_OK


def cmd_media_verify(args: argparse.Namespace) -> int:
    """Check every checksum, marker and chain; exit 1 if anything is wrong."""
    from shadowfs import media
    from shadowfs.media.reader import image_names

    store = media_of(args)
    progress = Progress("verify", json_lines=args.json)
    problems = media.verify(store, args.image, progress)
    progress.done()
    count = 1 if args.image else len(image_names(store))
    if args.json:
        print_json({"ok": not problems, "images": count,
                    "problems": [{"image": p.image, "message": str(p)} for p in problems]})
    elif problems:
        for problem in problems:
            print(f"damaged: {problem}")
    else:
        print(f"{count} image(s) verified: no problems")
    return EXIT_PROBLEMS if problems else EXIT_OK


def add_parser(commands: Subcommands) -> None:
    group = add_group(commands, "media", "list or verify backup media", "media_command")
    add_command(group, "list", cmd_media_list, "list the complete images on backup media",
                json_help=JSON_PROGRESS_HELP, media=True)
    check = add_command(group, "verify", cmd_media_verify,
                        "verify every checksum, completion marker and chain of the media (or one image)",
                        json_help=JSON_PROGRESS_HELP, media=True)
    check.add_argument("--image", metavar="ID", help="verify only this image and its chain")
