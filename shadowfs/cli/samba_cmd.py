"""`shadowfs samba VOLUME`: the smb.conf share that shows a volume's snapshots as Previous Versions.

One job: print an smb.conf section that shares VOLUME's live path with Samba's
vfs_shadow_copy2 pointed at the snapshot browser's ``by-volume/<volume>``
(design §5.6), with the paths of the running daemon, so the lines are right
for this installation. Nothing is written: the administrator adds the section
to smb.conf and reloads Samba.

Invariants:
- The volume must exist and the browser must be mounted; otherwise a
  `CliError` names what is missing and nothing is printed.
- ``shadow:mountpoint`` is always the volume's path: vfs_shadow_copy2 takes the
  share's path inside the snapshot relative to it, and a snapshot's root is the
  volume's root.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import add_command, state_of
from shadowfs.cli.output import print_json
from shadowfs.diffarea.schema import PREVIOUS_VERSION_FORMAT
from shadowfs.errors import CliError
from shadowfs.ipc.client import request

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

SHARE_NAME = re.compile(r"[^\[\]\n]{1,80}")


def share_options(volume: str, volume_path: str, browser_mount: str) -> dict[str, str]:
    """The smb.conf options of a share of `volume` (live at `volume_path`) with its previous versions."""
    return {
        "path": volume_path,
        "vfs objects": "shadow_copy2",
        "shadow:snapdir": os.path.join(browser_mount, "by-volume", volume),
        "shadow:mountpoint": volume_path,
        "shadow:format": PREVIOUS_VERSION_FORMAT,  # parametric options are not %-substituted
        "shadow:sort": "desc",
    }


def share_section(share: str, options: dict[str, str]) -> str:
    return "".join([f"[{share}]\n"] + [f"    {key} = {value}\n" for key, value in options.items()])


def cmd_samba(args: argparse.Namespace) -> int:
    volume = statedir.validate_volume_name(args.volume)
    share = args.share or volume
    if not SHARE_NAME.fullmatch(share) or share.strip() != share:
        raise CliError(f"--share {share!r}: a share name is 1 to 80 characters, no brackets or newline, "
                       "no leading or trailing blanks")
    state = state_of(args)
    found = [v for v in request(state, {"op": "volume_list"})["volumes"] if v["name"] == volume]
    if not found:
        raise CliError(f"no volume named {volume!r}")
    browser = request(state, {"op": "status"})["browser"]
    if not browser.get("mount"):
        raise CliError("the snapshot browser is not mounted: start the daemon first")
    options = share_options(volume, found[0]["mount"], browser["mount"])
    if args.json:
        print_json({"share": share, "volume": volume, "options": options,
                    "text": share_section(share, options)})
    else:
        print(f"# shadowfs: snapshots of volume {volume} as Windows Previous Versions (vfs_shadow_copy2)")
        print(share_section(share, options), end="")
    return 0


def add_parser(commands: Subcommands) -> None:
    parser = add_command(commands, "samba", cmd_samba,
                         "print the smb.conf share that shows a volume's snapshots as Previous Versions")
    parser.add_argument("volume", metavar="VOLUME", help="the volume to share")
    parser.add_argument("--share", metavar="NAME", help="the share's name (default: the volume's)")
