"""`shadowfs snapshot create | list | delete | damage | hold | release | prune | expose |
unexpose`: snapshot sets taken, kept, shown and deleted through the daemon.

One job: turn the command line into `snapshot_create`, `snapshot_list`,
`snapshot_delete`, `snapshot_damage`, `snapshot_hold`, `snapshot_release` and
`snapshot_prune` requests. Auto-release contexts are
refused here (their set would be deleted as soon as this command exits): a
`CliError`, exit 2. A set the daemon aborts (a writer vetoed, a volume did not
hold) is `SetAborted`, exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from shadowfs import statedir
from shadowfs.cli.common import add_command, add_group, full_id, resolve_id, state_of
from shadowfs.cli.output import print_json, print_table, size
from shadowfs.errors import CliError
from shadowfs.ipc.client import request
from shadowfs.ipc.messages import (
    KeepCounts,
    SnapshotDamageRequest,
    SnapshotExposeRequest,
    SnapshotHoldRequest,
    SnapshotPruneRequest,
    SnapshotUnexposeRequest,
)
from shadowfs.ipc.vss_messages import SnapshotCreateRequest

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

CONTEXTS = ("client_accessible_writers", "client_accessible", "app_rollback", "nas_rollback",
            "backup", "file_share_backup")
AUTO_RELEASE_CONTEXTS = ("backup", "file_share_backup")
NO_WRITER_CONTEXTS = ("client_accessible", "nas_rollback", "file_share_backup")


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    names = [statedir.validate_volume_name(n) for n in args.volumes]
    if args.all:
        if names:
            raise CliError("give volume names or --all, not both")
        names = [v["name"] for v in request(state_of(args), {"op": "volume_list"})["volumes"]]
        if not names:
            raise CliError("no volume is protected: nothing to snapshot (shadowfs volume add NAME PATH)")
    elif not names:
        raise CliError("name the volumes of the set, or give --all")
    context = args.context or ("client_accessible" if args.writers is False else "client_accessible_writers")
    if context in AUTO_RELEASE_CONTEXTS:
        raise CliError(f"context {context} is auto-release: its snapshots would be deleted as soon as this "
                       "command exits; use the shadowfs.vss.requester library for backups")
    if args.writers is True and context in NO_WRITER_CONTEXTS:
        raise CliError(f"context {context} does not involve writers; drop --writers")
    obj: SnapshotCreateRequest = {"op": "snapshot_create", "volumes": names, "context": context,
                                  "writers": context not in NO_WRITER_CONTEXTS and args.writers is not False}
    if args.freeze_timeout is not None:
        obj["freeze_timeout"] = args.freeze_timeout
    if args.label is not None:
        obj["label"] = args.label
    reply = request(state_of(args), obj)
    if args.json:
        print_json(reply)
        return 0
    writers = reply.get("writers", [])
    print(f"created snapshot set {reply['set_id']} at {reply['created']} ({reply.get('context', context)}, "
          f"{len(writers)} writer(s))")
    print_table(["VOLUME", "SNAPSHOT", "PATH"],
                [[s["volume"], s["id"], s["path"]] for s in reply["snapshots"]])
    for writer in writers:
        if not writer.get("ok", True):
            print(f"warning: writer {writer['writer_name']} failed at {writer['event']}: "
                  f"{writer.get('failure')} {writer.get('message', '')}".rstrip(), file=sys.stderr)
    return 0


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    snapshots = request(state_of(args), {"op": "snapshot_list"})["snapshots"]
    if args.json:
        print_json(snapshots)
        return 0
    damaged = any(s["damaged_objects"] for s in snapshots)  # a column only when some snapshot has any
    exposed = any(s["exposed"] for s in snapshots)  # the same
    headers = ["SET", "SNAPSHOT", "VOLUME", "CREATED", "DIFF AREA", *(["DAMAGED"] if damaged else []), "PATH",
               *(["EXPOSED AT"] if exposed else [])]
    print_table(headers, [[s["set_id"], s["id"], s["volume"], s["created"], size(s["diff_area_bytes"]),
                           *([s["damaged_objects"] or "-"] if damaged else []), s["path"],
                           *([", ".join(s["exposed"]) or "-"] if exposed else [])]
                          for s in snapshots])
    if damaged:
        print("damaged objects changed while protection had lapsed: reading them fails "
              "(shadowfs snapshot damage SNAPSHOT lists them)")
    return 0


def known_id(state: str, text: str) -> str:
    """The snapshot or set id `text` names: a full id, or a unique prefix of a listed one."""
    whole = full_id(text)
    if whole is not None:
        return whole  # no listing needed: an unknown id is the daemon's to report
    snapshots = request(state, {"op": "snapshot_list"})["snapshots"]
    return resolve_id(text, [s["id"] for s in snapshots] + [s["set_id"] for s in snapshots])


def cmd_snapshot_damage(args: argparse.Namespace) -> int:
    wanted = known_id(state_of(args), args.id)
    request_obj: SnapshotDamageRequest = {"op": "snapshot_damage", "snapshot": wanted}
    reply = request(state_of(args), request_obj)
    if args.json:
        print_json(reply)
        return 0
    if not reply["total"]:
        print("no damaged objects")
    for item in reply["damaged"]:
        where = item["path"] if item["path"] is not None else f"(inode {item['ino']}, path unknown)"
        print(f"{where}  {item['cause']}, found {item['found']}")
    if reply["total"] > len(reply["damaged"]):
        print(f"... and {reply['total'] - len(reply['damaged'])} more (not listed: too many for one reply)")
    return 0


def cmd_snapshot_hold(args: argparse.Namespace) -> int:
    """`snapshot hold ID` / `snapshot release ID` (the handler of both)."""
    state = state_of(args)
    wanted = known_id(state, args.id)
    hold: SnapshotHoldRequest = {"op": "snapshot_hold", "snapshot": wanted}
    if args.snapshot_command == "release":
        hold = {"op": "snapshot_release", "snapshot": wanted}
    reply = request(state, hold)
    if args.json:
        print_json(reply["snapshots"])
        return 0
    for item in reply["snapshots"]:
        state_text = f"held since {item['held']}" if item["held"] else "released"
        print(f"snapshot {item['id']} of volume {item['volume']} (set {item['set_id']}): {state_text}")
    return 0


def cmd_snapshot_prune(args: argparse.Namespace) -> int:
    keep: KeepCounts = {"last": args.keep_last, "hourly": args.keep_hourly, "daily": args.keep_daily,
                        "weekly": args.keep_weekly, "monthly": args.keep_monthly, "yearly": args.keep_yearly}
    if not any(keep.values()):
        raise CliError("give at least one --keep-* rule (e.g. --keep-daily 7): without one nothing "
                       "would be kept, so nothing is pruned")
    volume = None if args.volume is None else statedir.validate_volume_name(args.volume)
    prune: SnapshotPruneRequest = {"op": "snapshot_prune", "keep": keep, "volume": volume,
                                   "label": args.label, "dry_run": args.dry_run}
    reply = request(state_of(args), prune)
    if args.json:
        print_json(reply)
        return 0
    rows = [[s["volume"], s["id"][:8], s["set_id"][:8], s["created"], ", ".join(s["reasons"]) or "-",
             "keep" if s["reasons"] else ("would remove" if args.dry_run else "removed")]
            for s in sorted(reply["keep"] + reply["remove"], key=lambda s: (s["volume"], s["created"]))]
    print_table(["VOLUME", "SNAPSHOT", "SET", "CREATED", "KEPT BY", "ACTION"], rows)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(reply['remove'])} snapshot(s), kept {len(reply['keep'])}"
          + ("" if args.dry_run else f", freed {size(reply['freed'])}"))
    return 0


def cmd_snapshot_expose(args: argparse.Namespace) -> int:
    state = state_of(args)
    expose: SnapshotExposeRequest = {"op": "snapshot_expose", "snapshot": known_id(state, args.id),
                                     "path": os.path.abspath(args.path)}
    reply = request(state, expose)
    if args.json:
        print_json(reply)
    else:
        print(f"snapshot {reply['snapshot']} of volume {reply['volume']} is at {reply['path']} (read-only)")
    return 0


def cmd_snapshot_unexpose(args: argparse.Namespace) -> int:
    unexpose: SnapshotUnexposeRequest = {"op": "snapshot_unexpose", "path": os.path.abspath(args.path)}
    reply = request(state_of(args), unexpose)
    if args.json:
        print_json(reply)
    else:
        print(f"snapshot {reply['snapshot']} is no longer at {reply['path']}")
    return 0


def cmd_snapshot_delete(args: argparse.Namespace) -> int:
    wanted = known_id(state_of(args), args.id)
    reply = request(state_of(args), {"op": "snapshot_delete", "snapshot": wanted, "force": args.force})
    if args.json:
        print_json(reply)
    else:
        print(f"deleted {len(reply['deleted'])} snapshot(s), freed {size(reply.get('freed', 0))}")
    return 0


def add_parser(commands: Subcommands) -> None:
    snapshots = add_group(commands, "snapshot", "create, list, hold, prune or delete snapshots, or list "
                          "their damage",
                          "snapshot_command")
    screate = add_command(snapshots, "create", cmd_snapshot_create,
                          "take one snapshot set: every named volume at the same instant")
    screate.add_argument("volumes", metavar="VOLUME", nargs="*")
    screate.add_argument("--all", action="store_true", help="every protected volume, in one set")
    screate.add_argument("--writers", dest="writers", action="store_true", default=None,
                         help="freeze the writers whose files lie on these volumes (the default)")
    screate.add_argument("--no-writers", dest="writers", action="store_false",
                         help="take a crash-consistent set without writers")
    screate.add_argument("--context", choices=CONTEXTS,
                         help="snapshot context (default: client_accessible_writers, or client_accessible "
                              "with --no-writers); persistent contexts survive daemon restarts")
    screate.add_argument("--freeze-timeout", type=float, metavar="SECONDS",
                         help="abort the set if a writer does not freeze within this time (default: each "
                              "writer's own, 60 s)")
    screate.add_argument("--label", metavar="LABEL",
                         help="name the job that makes this set (letters, digits, . _ -), e.g. timeline; "
                              "`snapshot prune --label` then prunes only such sets")
    add_command(snapshots, "list", cmd_snapshot_list, "list snapshots")
    sdelete = add_command(snapshots, "delete", cmd_snapshot_delete,
                          "delete a snapshot, or every snapshot of a set")
    sdelete.add_argument("id", metavar="ID",
                         help="a snapshot id or a snapshot set id (or its first characters, if unique)")
    sdelete.add_argument("--force", action="store_true", help="delete held snapshots too")
    for name, what in (("hold", "keep a snapshot (or every snapshot of a set) from delete, prune and the "
                                "diff area's limit until released"),
                       ("release", "release a held snapshot (or every snapshot of a set)")):
        shold = add_command(snapshots, name, cmd_snapshot_hold, what)
        shold.add_argument("id", metavar="ID", help="a snapshot id or set id (or a unique prefix)")
    sprune = add_command(snapshots, "prune", cmd_snapshot_prune,
                         "delete the snapshots no --keep-* rule keeps (restic forget's rules, per volume; "
                         "held snapshots stay)")
    for rule, period in (("last", "newest snapshots"), ("hourly", "newest hours"), ("daily", "newest days"),
                         ("weekly", "newest ISO weeks"), ("monthly", "newest months"),
                         ("yearly", "newest years")):
        sprune.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N",
                            help=f"keep the {period}" if rule == "last" else
                            f"keep the newest snapshot of each of the N {period} that have one (local time)")
    sprune.add_argument("--volume", metavar="NAME", help="prune only this volume's snapshots")
    sprune.add_argument("--label", metavar="LABEL",
                        help="prune only sets created with this --label (others are neither kept nor "
                             "removed)")
    sprune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    sexpose = add_command(snapshots, "expose", cmd_snapshot_expose,
                          "show one snapshot read-only at a path of your choice, with the volume's inode "
                          "numbers (until unexpose, volume remove, its deletion or the daemon's stop)")
    sexpose.add_argument("id", metavar="ID",
                         help="a snapshot id, or the id of a set of one volume (or a unique prefix)")
    sexpose.add_argument("path", metavar="PATH", help="an existing empty directory outside the volumes")
    sunexpose = add_command(snapshots, "unexpose", cmd_snapshot_unexpose, "take an exposed snapshot away")
    sunexpose.add_argument("path", metavar="PATH", help="where it is exposed")
    sdamage = add_command(snapshots, "damage", cmd_snapshot_damage,
                          "list the objects damaged in a snapshot: changed while protection had lapsed, "
                          "so reading them there fails")
    sdamage.add_argument("id", metavar="ID", help="a snapshot id (or its first characters, if unique)")
