"""`shadowfs revert SNAPSHOT [PATH...] [--dry-run]`: paths of a volume, or the whole volume, put back
in place as they were in one of its snapshots.

One job: the command around `snapshot.revertplan` (what must change) and
`restore.revert` (changing it through the live mount). PATHs are live paths
(absolute, or relative to the current directory) inside the snapshot's
volume; none means the whole volume. The sequence:

1. the plan, read-only: the snapshot's tree in the browser and the live
   volume compared (with the diff area's candidates, opened read-only); with
   ``--dry-run`` it is printed and nothing else happens;
2. a snapshot set of the volume, labelled ``revert`` (writers frozen, as
   `snapshot create`), so that the revert can be reverted: its ids are in the
   output;
3. the plan made again (the volume may have changed since step 1) and carried
   out.

Errors: an unknown snapshot, a path outside its volume or in neither tree
(exit 2); a path damaged in the snapshot (design §9.3), refused before
anything changes (exit 2); a revert that stops part way (a busy file, a full
disk, the volume changed meanwhile) says where, what was done, and names the
safety snapshot that undoes it (exit 1).
"""

from __future__ import annotations

import argparse
import errno
import os
from typing import TYPE_CHECKING, Any

from shadowfs import statedir
from shadowfs.cli.common import add_command, find_snapshot, state_of, volume_of_path
from shadowfs.cli.output import print_json
from shadowfs.errors import ChildFailed, CliError, RevertError, RevertRefused
from shadowfs.ipc.client import request
from shadowfs.ipc.vss_messages import SnapshotCreateRequest

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands
    from shadowfs.ipc.messages import SnapshotEntry
    from shadowfs.snapshot.revertplan import RevertPlan
    from shadowfs.snapshot.tree import SourceTree

MARKS = {"created": "+", "deleted": "-", "renamed": "R", "linked": "L", "unlinked": "U", "modified": "M"}
LABEL = "revert"


def _plan(state: str, snap: SnapshotEntry, snap_tree: SourceTree, live_tree: SourceTree,
          scopes: list[str]) -> RevertPlan:
    """The plan, with the candidates the diff area gives when the snapshot has no damage."""
    from shadowfs.diffarea.area import DiffArea
    from shadowfs.diffarea.schema import Seq
    from shadowfs.snapshot.changes import scan
    from shadowfs.snapshot.revertplan import plan_revert

    area = DiffArea.open(statedir.diff_area_path(state, snap["volume"]), readonly=True)
    try:
        # with damage, captures do not say everything that changed: every object is compared
        candidates = None if snap["damaged_objects"] else scan(area, Seq(snap["seq"]), None)
    finally:
        area.close()
    try:
        return plan_revert(snap_tree, live_tree, scopes, candidates)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise RevertRefused(f"{exc.filename or '/'}: damaged in snapshot {snap['id']} (it changed while "
                                "protection had lapsed), so the snapshot cannot give it back; nothing was "
                                "changed") from None
        if exc.errno == errno.ESTALE:
            raise CliError(f"snapshot {snap['id']} was deleted meanwhile; nothing was changed") from None
        raise


def _safety_set(state: str, volume: str) -> tuple[str, str]:
    """(set id, snapshot id) of a new set of `volume`, taken before the revert changes anything."""
    create: SnapshotCreateRequest = {"op": "snapshot_create", "volumes": [volume],
                                     "context": "client_accessible_writers", "writers": True, "label": LABEL}
    reply = request(state, create)
    return reply["set_id"], reply["snapshots"][0]["id"]


def cmd_revert(args: argparse.Namespace) -> int:
    from shadowfs.diffarea.schema import HIDDEN_DIR
    from shadowfs.restore.revert import revert
    from shadowfs.snapshot.revertplan import scope_paths
    from shadowfs.snapshot.tree import SourceTree

    state = state_of(args)
    snap = find_snapshot(request(state, {"op": "snapshot_list"})["snapshots"], args.snapshot, args.volume)
    volumes = request(state, {"op": "volume_list"})["volumes"]
    volume = next((v for v in volumes if v["name"] == snap["volume"]), None)
    if volume is None:
        raise CliError(f"volume {snap['volume']} of snapshot {snap['id']} is not protected any more")
    scopes = []
    for path in args.paths:
        holder, rel = volume_of_path(volumes, path)
        if holder["name"] != volume["name"]:
            raise CliError(f"{path} is in volume {holder['name']}, not in volume {volume['name']} of "
                           f"snapshot {snap['id']}")
        scopes.append(rel)
    scopes = scope_paths(scopes or [""])
    out: dict[str, Any] = {"volume": volume["name"], "snapshot": snap["id"], "set": snap["set_id"],
                           "paths": scopes, "dry_run": args.dry_run, "safety": None, "warnings": []}
    with SourceTree(snap["path"]) as snap_tree, \
            SourceTree(volume["mount"], hidden=[os.fsdecode(HIDDEN_DIR)]) as live_tree:
        if snap_tree.meta("") is None:
            raise ChildFailed(f"snapshot {snap['id']} is not readable at {snap['path']}")
        plan = _plan(state, snap, snap_tree, live_tree, scopes)
        if not args.dry_run and not plan.empty:
            safety_set, safety = _safety_set(state, volume["name"])
            out["safety"] = {"set": safety_set, "snapshot": safety}
            try:
                plan = _plan(state, snap, snap_tree, live_tree, scopes)  # the volume as it is now
            except (CliError, RevertRefused) as exc:
                raise type(exc)(f"{exc} (snapshot {safety}, taken for the revert, is not needed)") from None
            try:
                result = revert(volume["mount"], snap_tree, plan)
            except RevertError as exc:
                raise RevertError(f"{exc}; the volume as it was before is snapshot {safety} (set "
                                  f"{safety_set}): `shadowfs revert {safety}` undoes what was done") from None
            out["warnings"] = sorted(set(result.warnings))
    out["changes"] = plan.changes
    if args.json:
        print_json(out)
        return 0
    for item in plan.changes:
        extra = [f"from {item['from']}"] if "from" in item else []
        if "attributes" in item:
            extra.append("attributes " + ",".join(item["attributes"]))
        if item.get("data"):
            extra.append("data" + (" (copied anew)" if item.get("copied") else ""))
        print(f"{MARKS[item['change']]} {item['path'] or '/'}" + (f"  ({'; '.join(extra)})" if extra else ""))
    where = ", ".join(p or "/" for p in scopes)
    if plan.empty:
        print(f"{where}: already as in snapshot {snap['id']}; nothing to do")
    elif args.dry_run:
        print(f"dry run: {len(plan.changes)} change(s) would bring {where} back to snapshot {snap['id']}")
    else:
        print(f"reverted {where} of volume {volume['name']} to snapshot {snap['id']}; before the revert: "
              f"snapshot {out['safety']['snapshot']} (set {out['safety']['set']})")
        for warning in out.get("warnings", []):
            print(f"warning: {warning}")
    return 0


def add_parser(commands: Subcommands) -> None:
    parser = add_command(commands, "revert", cmd_revert,
                         "put paths of a volume (or all of it) back in place as they were in a snapshot; "
                         "a snapshot taken first keeps what they were before")
    parser.add_argument("snapshot", metavar="SNAPSHOT",
                        help="a snapshot id, or the id of a set (of one volume, or with --volume); or a "
                             "unique prefix")
    parser.add_argument("paths", metavar="PATH", nargs="*",
                        help="live paths in the snapshot's volume (absolute, or relative to the current "
                             "directory); none: the whole volume")
    parser.add_argument("--volume", metavar="NAME", help="the volume, when SNAPSHOT is a set id")
    parser.add_argument("--dry-run", action="store_true",
                        help="only print what would change; change nothing, take no snapshot")
