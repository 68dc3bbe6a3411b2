"""The `shadowfs` console script: every command's parser, the dispatch, and the one way a command fails.

One job: build the parser from each command module's `add_parser` (one module
per command, `*_cmd.py`), run the chosen handler, and turn what it raises into
one line on stderr and the exit code `errors.exit_code_of` gives. `shadowfs
daemon` is the one command that does not talk to a daemon: it becomes one.

Invariants:
- Every failure prints exactly one line, `shadowfs: <message>`, on stderr and
  exits with `errors.exit_code_of(exc)`: 1 finished with problems, 2 usage or
  refused, 3 the daemon is unreachable, 130 interrupted. With --json the same
  error is also one JSON object on stdout, `{"error", "kind", "exit_code"}`.
  Usage errors are argparse's: its usage text and exit 2.
- A handler returns 0, or 1 when the job finished with problems (a failed
  component, damaged media, a writer's failure) after printing its result.
- Nothing here imports trio or pyfuse3 (only the handlers of `daemon` and
  `writer sqlite` do), nor the backup, restore and media engines (only their
  handlers do), so every command starts fast.
- Exceptions that are not shadowfs errors, I/O errors or an interrupt are
  bugs: they keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shadowfs import __version__
from shadowfs.cli import (
    backup_cmd,
    blame_cmd,
    daemon_cmd,
    diff_cmd,
    exec_cmd,
    media_cmd,
    restore_cmd,
    revert_cmd,
    samba_cmd,
    snapshot_cmd,
    status_cmd,
    systemd_cmd,
    versions_cmd,
    volume_cmd,
    writer_cmd,
)
from shadowfs.cli.common import common_options
from shadowfs.errors import CliError as CliError  # its old home: `from shadowfs.cli.main import CliError`
from shadowfs.errors import ShadowfsError, exit_code_of, kind_of, message_of

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

# in the order `shadowfs --help` lists them
PARSERS: tuple[Callable[[Subcommands], None], ...] = (
    daemon_cmd.add_parser, volume_cmd.add_parser, snapshot_cmd.add_parser, status_cmd.add_parser,
    writer_cmd.add_parser, backup_cmd.add_parser, restore_cmd.add_parser, media_cmd.add_parser,
    diff_cmd.add_parser, blame_cmd.add_parser, versions_cmd.add_parser, revert_cmd.add_parser,
    exec_cmd.add_parser, systemd_cmd.add_parser, samba_cmd.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowfs", parents=[common_options()],
                                     description="VSS-style snapshot sets of Linux directory trees.")
    parser.add_argument("--version", action="version", version=f"shadowfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in PARSERS:
        add_parser(commands)
    return parser


def report(exc: BaseException, as_json: bool) -> int:
    """Print `exc` the one way a command fails; return its exit code."""
    code = exit_code_of(exc)
    message = message_of(exc)
    print(f"shadowfs: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "kind": kind_of(exc), "exit_code": code}, sort_keys=True),
              flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.state = getattr(args, "state", None)
    try:
        return int(args.func(args))
    except (ShadowfsError, OSError, KeyboardInterrupt) as exc:
        return report(exc, args.json)
