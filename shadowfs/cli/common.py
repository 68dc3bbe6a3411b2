"""What every `shadowfs` command shares: the common options, the media option, ids and directories.

One job: the pieces each `*_cmd.py` module builds its parser and its handler
from, so that `--state`, `--json`, `--media` and snapshot ids mean the same in
every command.

Invariants:
- `--state` and `--json` are accepted before and after the command (a parent
  parser on every subcommand, with `SUPPRESS` defaults so a later one does not
  reset an earlier one); `main` fills in what was not given.
- Paths from the user are made absolute here or in the handler, so the daemon
  never sees a path relative to some other working directory.
- Importing this module imports neither trio nor pyfuse3, nor an engine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.errors import CliError

if TYPE_CHECKING:
    from typing import TypeAlias

    from shadowfs.ipc.messages import SnapshotEntry, VolumeEntry

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

MEDIA_ENV = "SHADOWFS_MEDIA"
JSON_HELP = "print the result as JSON"
JSON_PROGRESS_HELP = "print the result as JSON (progress as JSON lines on stderr)"

Handler = Callable[[argparse.Namespace], int]


def state_of(args: argparse.Namespace) -> str:
    """The state directory: --state, else $SHADOWFS_STATE, else /var/lib/shadowfs; absolute."""
    return statedir.resolve_state_dir(getattr(args, "state", None))


def media_of(args: argparse.Namespace) -> str:
    """The backup media directory: --media, else $SHADOWFS_MEDIA; absolute. CliError if neither."""
    path = getattr(args, "media", None) or os.environ.get(MEDIA_ENV)
    if not path:
        raise CliError(f"no backup media: give --media DIR or set ${MEDIA_ENV}")
    return os.path.abspath(path)


MIN_ID_PREFIX = 4


def full_id(text: str) -> str | None:
    """`text` as a full snapshot or set id (a UUID), or None when it is a usable prefix of one
    (at least `MIN_ID_PREFIX` hex digits and dashes); CliError when it is neither."""
    with contextlib.suppress(ValueError):
        return str(uuid.UUID(text))
    if len(text) < MIN_ID_PREFIX or not set(text.lower()) <= set("0123456789abcdef-"):
        raise CliError(f"invalid snapshot or set id {text!r} (expected a UUID or at least "
                       f"{MIN_ID_PREFIX} of its first characters)")
    return None


def resolve_id(text: str, known: Iterable[str]) -> str:
    """A full snapshot or set id, or the one id of `known` that starts with `text` (as
    `snapshot list` prints them); CliError naming the problem otherwise."""
    whole = full_id(text)
    if whole is not None:
        return whole
    prefix = text.lower()
    matches = sorted({ident for ident in known if ident.startswith(prefix)})
    if not matches:
        raise CliError(f"no snapshot or set id starts with {text!r}")
    if len(matches) > 1:
        raise CliError(f"{text!r} is the start of {len(matches)} ids ({', '.join(matches[:4])}"
                       f"{', ...' if len(matches) > 4 else ''}): give more characters")
    return matches[0]


def find_snapshot(snapshots: list[SnapshotEntry], ident: str, volume: str | None) -> SnapshotEntry:
    """The snapshot `ident` names among `snapshots` (`snapshot list`): a snapshot id, or the id of a
    set (of one volume, or with `volume`); either may be a unique prefix. CliError otherwise."""
    wanted = resolve_id(ident, [s["id"] for s in snapshots] + [s["set_id"] for s in snapshots])
    found = [s for s in snapshots if s["id"] == wanted]
    if not found:
        found = [s for s in snapshots if s["set_id"] == wanted and (volume is None or s["volume"] == volume)]
    if not found:
        raise CliError(f"no snapshot {ident}" + (f" of volume {volume}" if volume else ""))
    if len(found) > 1:
        raise CliError(f"set {ident} has several volumes: choose one with --volume")
    return found[0]


def volume_of_path(volumes: list[VolumeEntry], path: str) -> tuple[VolumeEntry, str]:
    """The volume whose live path holds `path` (absolute, or relative to the current directory;
    symlinks are not followed, except on the way to a volume's path), and `path` relative to the
    volume's root ("" for the root). CliError naming the volumes when none holds it."""
    absolute = os.path.abspath(path)
    candidates = [absolute]
    head, tail = os.path.split(absolute)
    if tail:
        candidates.append(os.path.join(os.path.realpath(head), tail))
    for candidate in candidates:
        holders = [v for v in volumes if statedir.is_within(candidate, v["mount"])]
        if holders:
            volume = max(holders, key=lambda v: len(v["mount"]))
            rest = candidate[len(volume["mount"].rstrip("/")):].lstrip("/")
            return volume, rest
    known = ", ".join(f"{v['name']} at {v['mount']}" for v in volumes) or "none"
    raise CliError(f"{path} is not inside a protected volume (volumes: {known})")


def common_options(json_help: str = JSON_HELP) -> argparse.ArgumentParser:
    """The options every subcommand takes (--state, --json), as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"state directory (default: ${statedir.STATE_ENV}, "
                             f"else {statedir.DEFAULT_STATE_DIR})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    return common


def media_option() -> argparse.ArgumentParser:
    """--media DIR, as a parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--media", metavar="DIR", help=f"the backup media directory (default: ${MEDIA_ENV})")
    return parent


def add_command(sub: Subcommands, name: str, func: Handler, text: str, *,
                json_help: str = JSON_HELP, media: bool = False) -> argparse.ArgumentParser:
    """A subcommand `name` of `sub` that runs `func`, with the common options (and --media)."""
    parents = [common_options(json_help)] + ([media_option()] if media else [])
    child = sub.add_parser(name, parents=parents, help=text, description=text)
    child.set_defaults(func=func)
    return child


def add_group(sub: Subcommands, name: str, text: str, dest: str, metavar: str = "COMMAND") -> Subcommands:
    """A command that only groups subcommands (`volume`, `snapshot`, `media`, `writer`)."""
    group = sub.add_parser(name, help=text)
    return group.add_subparsers(dest=dest, required=True, metavar=metavar)
