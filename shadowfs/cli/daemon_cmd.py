"""`shadowfs daemon`: become the daemon of a state directory, in the foreground until SIGTERM.

One job: the one command that talks to no daemon. trio and pyfuse3 are
imported only here, inside the handler, so no other command pays for them.
A second daemon on the same state directory fails with `DaemonRunning`
(exit 2), a state directory inside a protected tree with `ConfigError` (exit 2).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shadowfs import logsetup, statedir
from shadowfs.cli.common import add_command

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands


def cmd_daemon(args: argparse.Namespace) -> int:
    from shadowfs.daemon import server  # pyfuse3 and trio only for the daemon itself

    return server.run(args.state, args.mount_root, args.max_snapshots_per_volume, args.log_level)


def add_parser(commands: Subcommands) -> None:
    daemon = add_command(commands, "daemon", cmd_daemon,
                         "run the shadowfs daemon in the foreground until SIGTERM")
    daemon.add_argument("--mount-root", metavar="DIR",
                        help=f"where snapshots/ is mounted "
                             f"(default: ${statedir.MOUNT_ROOT_ENV}, else <state>/mnt)")
    daemon.add_argument("--log-level", choices=logsetup.LEVELS,
                        help=f"log this level and above to stderr (the journal under systemd), the "
                             f"mount processes and the browser too (default: ${logsetup.LEVEL_ENV}, "
                             f"else info)")
    daemon.add_argument("--max-snapshots-per-volume", type=int, metavar="N",
                        help="refuse a new snapshot set when a volume already has N snapshots "
                             "(default: $SHADOWFS_MAX_SNAPSHOTS_PER_VOLUME, else 512, as VSS)")
