"""CLI commands of backup jobs: `backup`, `restore`, `media list`, `media verify`, `diff`.

One job: argparse in front of `shadowfs.backup`, `shadowfs.restore`,
`shadowfs.media` and `shadowfs.snapdiff`. `cli.build_parser` calls
`add_parsers(commands)`; every handler raises `cli.CliError` for what the user
must fix (one line on stderr, exit 1), as the other commands do.

- ``backup``: a VSS backup job (`backupjob.run_backup`): the registered
  writers' components on the volumes, a snapshot set, the image (with the BCD
  and WMDs), BackupComplete; then the set is deleted (``--keep-snapshot``
  keeps it, so that the next incremental or differential can read what
  changed straight from the diff areas). With no writers it is a plain
  crash-consistent backup. Exit 1 when a component failed (the image is kept).
- ``restore``: to ``--to DIR/<volume>/``, or without ``--to`` into each
  volume's live mount (the original place); PreRestore / PostRestore with the
  writers of the image's BCDs (`backupjob.run_restore`), ``--new-target``;
  exit 1 when a writer failed PostRestore.
- ``media list`` / ``media verify``: no daemon needed.
- ``diff A B``: two snapshots (ids, or set ids with ``--volume``) of one volume.

Progress goes to stderr: a bar on a terminal, JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable
from typing import Any

from shadowfs import media, statedir
from shadowfs.backup.job import run_backup, run_restore
from shadowfs.cli import main as cli
from shadowfs.cli.progress import Progress, human_bytes
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.documents import DocumentError
from shadowfs.linux.confined import UnsafePath
from shadowfs.media.reader import image_names
from shadowfs.snapshot import changes
from shadowfs.snapshot.diff import diff_snapshots
from shadowfs.snapshot.tree import SourceTree

MEDIA_ENV = "SHADOWFS_MEDIA"
Handler = Callable[[argparse.Namespace], int]


def _guard(func: Handler) -> Handler:
    """Turn the library's errors into `cli.CliError` (one line, exit 1)."""
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (media.MediaError, DiffAreaError, DocumentError, UnsafePath) as exc:
            raise cli.CliError(str(exc)) from None
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _media(args: argparse.Namespace) -> str:
    path = args.media or os.environ.get(MEDIA_ENV)
    if not path:
        raise cli.CliError(f"no backup media: give --media DIR or set ${MEDIA_ENV}")
    return os.path.abspath(path)


def _state(args: argparse.Namespace) -> str:
    return statedir.resolve_state_dir(getattr(args, "state", None))


# ---- backup --------------------------------------------------------------------------------------


@_guard
def cmd_backup(args: argparse.Namespace) -> int:
    """Run a VSS backup job (`backupjob.run_backup`): writers, a snapshot set, the image, BackupComplete."""
    names = [statedir.validate_volume_name(n) for n in args.volumes]
    if len(set(names)) != len(names):
        raise cli.CliError("a volume is named twice")
    store, state = _media(args), _state(args)
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
        cli.print_json(result)
    else:
        how = f" (changes from the diff area of {', '.join(outcome.fast_path)})" if outcome.fast_path else ""
        print(f"image {outcome.image}: {args.type} backup of set {outcome.set_id}, "
              f"{result['files']} file(s), {human_bytes(result['bytes'])}{how}")
        for component in outcome.components:
            state_text = "ok" if component.get("succeeded", True) else "FAILED: " + "; ".join(
                component.get("failures", []))
            print(f"  {component['writer']} {component['component']} ({component['type']}): {state_text}")
        for warning in outcome.warnings:
            print(f"  warning: {warning}")
    return 1 if failed else 0


# ---- restore -------------------------------------------------------------------------------------


@_guard
def cmd_restore(args: argparse.Namespace) -> int:
    """Restore an image (and its chain) to --to DIR, or to each volume's live mount."""
    store = _media(args)
    image = media.open_image(store, args.image)
    targets = None
    if args.to is None:
        volumes = {v["name"]: v for v in cli.request(_state(args), {"op": "volume_list"})["volumes"]}
        missing = sorted(set(image.info.volume_names) - set(volumes))
        if missing:
            raise cli.CliError(f"volume(s) {', '.join(missing)} of image {image.id} are not protected here: "
                               "give --to DIR")
        targets = {name: volumes[name]["mount"] for name in image.info.volume_names}
    total = sum(int(media.open_image(store, i).info.stats.get("records", 0)) for i in image.info.chain)
    total += int(image.info.stats.get("records", 0))
    progress = Progress("restore", json_lines=args.json, total=total or None)
    new_targets = []
    for item in args.new_target or []:
        source, sep, dest = item.partition("=")
        if not sep or not os.path.isabs(source) or not os.path.isabs(dest):
            raise cli.CliError(f"--new-target {item!r}: expected /SOURCE/DIR=/NEW/DIR (absolute paths)")
        new_targets.append((os.path.normpath(source), os.path.normpath(dest)))
    result, writer_failures = run_restore(
        getattr(args, "state", None), store, image.id, None if args.to is None else os.path.abspath(args.to),
        targets=targets, volumes=args.volume or None, new_targets=new_targets, with_writers=args.writers,
        progress=progress)
    progress.done()
    out = {"image": result.image, "chain": result.chain, "targets": result.targets, "files": result.files,
           "bytes": result.bytes, "removed": result.removed, "warnings": result.warnings,
           "writer_failures": writer_failures}
    if args.json:
        cli.print_json(out)
    else:
        print(f"restored image {result.image} (chain of {len(result.chain)}): {result.files} file(s), "
              f"{human_bytes(result.bytes)}, {result.removed} removed")
        for volume, target in sorted(result.targets.items()):
            print(f"  {volume} -> {target}")
        for failure in writer_failures:
            print(f"  {failure}")
    return 1 if writer_failures else 0


# ---- media ---------------------------------------------------------------------------------------


@_guard
def cmd_media_list(args: argparse.Namespace) -> int:
    """List the complete images on the media."""
    images = [image.summary() for image in media.list_images(_media(args))]
    if args.json:
        cli.print_json(images)
        return 0
    cli.print_table(["IMAGE", "TYPE", "CREATED", "VOLUMES", "FILES", "BYTES", "BASE"],
                    [[i["id"], i["type"], i["created"], ",".join(i["volumes"]), i["files"],
                      human_bytes(i["bytes"]), i["base"] or "-"] for i in images])
    return 0


@_guard
def cmd_media_verify(args: argparse.Namespace) -> int:
    """Check every checksum, marker and chain; exit 1 if anything is wrong."""
    store = _media(args)
    problems = media.verify(store, args.image)
    count = 1 if args.image else len(image_names(store))
    if args.json:
        cli.print_json({"ok": not problems, "images": count,
                        "problems": [{"image": p.image, "message": str(p)} for p in problems]})
    elif problems:
        for problem in problems:
            print(f"damaged: {problem}")
    else:
        print(f"{count} image(s) verified: no problems")
    return 1 if problems else 0


# ---- diff ----------------------------------------------------------------------------------------


def _find_snapshot(snapshots: list[dict[str, Any]], ident: str, volume: str | None) -> dict[str, Any]:
    try:
        wanted = str(uuid.UUID(ident))
    except ValueError:
        raise cli.CliError(f"invalid snapshot or set id {ident!r} (expected a UUID)") from None
    found = [s for s in snapshots if s["id"] == wanted]
    if not found:
        found = [s for s in snapshots if s["set_id"] == wanted and (volume is None or s["volume"] == volume)]
    if not found:
        raise cli.CliError(f"no snapshot {ident}" + (f" of volume {volume}" if volume else ""))
    if len(found) > 1:
        raise cli.CliError(f"set {ident} has several volumes: choose one with --volume")
    return found[0]


@_guard
def cmd_diff(args: argparse.Namespace) -> int:
    """What changed from snapshot A to the newer snapshot B of the same volume."""
    state = _state(args)
    snapshots = cli.request(state, {"op": "snapshot_list"})["snapshots"]
    a, b = (_find_snapshot(snapshots, ident, args.volume) for ident in (args.a, args.b))
    if a["volume"] != b["volume"]:
        raise cli.CliError(f"snapshots of different volumes ({a['volume']}, {b['volume']})")
    if a["seq"] >= b["seq"]:
        raise cli.CliError("snapshot A must be older than snapshot B")
    area = DiffArea.open(statedir.diff_area_path(state, a["volume"]), readonly=True)
    try:
        with SourceTree(a["path"]) as tree_a, SourceTree(b["path"]) as tree_b:
            found = changes.scan(area, int(a["seq"]), int(b["seq"]))
            root = tree_a.meta("")
            if root is None:
                raise cli.CliError(f"snapshot {a['id']} is not readable at {a['path']}")
            items = diff_snapshots(found, changes.PathReader(tree_a), changes.PathReader(tree_b), root.ino)
    finally:
        area.close()
    if args.json:
        cli.print_json({"volume": a["volume"], "from": a["id"], "to": b["id"], "changes": items})
        return 0
    marks = {"created": "+", "deleted": "-", "renamed": "R", "linked": "L", "unlinked": "U", "modified": "M"}
    for item in items:
        extra = []
        if "from" in item:
            extra.append(f"from {item['from']}")
        if "data" in item:
            extra.append(f"data {sum(n for _, n in item['data'])} bytes in {len(item['data'])} range(s)")
        if "attributes" in item:
            extra.append("attributes " + ",".join(item["attributes"]))
        print(f"{marks[item['change']]} {item['path'] or '/'}" + (f"  ({'; '.join(extra)})" if extra else ""))
    return 0


# ---- parsers -------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    return cli.common_options("print the result as JSON (progress as JSON lines on stderr)")


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `backup`, `restore`, `media` and `diff` to the `shadowfs` command parser."""
    common = _common()
    with_media = argparse.ArgumentParser(add_help=False)
    with_media.add_argument("--media", metavar="DIR",
                            help=f"the backup media directory (default: ${MEDIA_ENV})")

    def add(sub: argparse._SubParsersAction, name: str, func: Handler, text: str,  # type: ignore[type-arg]
            media_option: bool = True) -> argparse.ArgumentParser:
        parents = [common, with_media] if media_option else [common]
        child = sub.add_parser(name, parents=parents, help=text, description=text)
        child.set_defaults(func=func)
        return child

    types = ", ".join(media.BACKUP_TYPES)
    back = add(commands, "backup", cmd_backup, "back up volumes from a new snapshot set onto backup media")
    back.add_argument("volumes", metavar="VOLUME", nargs="+")
    back.add_argument("--type", choices=media.BACKUP_TYPES, default="full", help=f"backup type: {types}")
    back.add_argument("--base", metavar="IMAGE", help="the image an incremental/differential builds on "
                      "(default: the newest suitable image of the same volumes)")
    back.add_argument("--keep-snapshot", action="store_true",
                      help="keep the snapshot set, so the next incremental reads changes from the diff area")
    back.add_argument("--no-writers", dest="writers", action="store_false",
                      help="take a crash-consistent set without freezing writers")

    rest = add(commands, "restore", cmd_restore, "restore an image and its chain")
    rest.add_argument("--image", required=True, metavar="ID")
    rest.add_argument("--to", metavar="DIR", help="restore under DIR/<volume>/ (default: into each volume)")
    rest.add_argument("--volume", action="append", metavar="NAME",
                      help="restore only this volume (repeatable)")
    rest.add_argument("--new-target", action="append", metavar="/DIR=/NEW",
                      help="restore writer components' files under /DIR to /NEW instead (AddNewTarget; "
                           "repeatable)")
    rest.add_argument("--no-writers", dest="writers", action="store_false",
                      help="restore without PreRestore/PostRestore to the image's writers")

    group = commands.add_parser("media", help="list or verify backup media")
    media_commands = group.add_subparsers(dest="media_command", required=True, metavar="COMMAND")
    add(media_commands, "list", cmd_media_list, "list the complete images on backup media")
    check = add(media_commands, "verify", cmd_media_verify,
                "verify every checksum, completion marker and chain of the media (or one image)")
    check.add_argument("--image", metavar="ID", help="verify only this image and its chain")

    diff = add(commands, "diff", cmd_diff, "what changed between two snapshots of a volume",
               media_option=False)
    diff.add_argument("a", metavar="SNAPSHOT_A", help="the older snapshot (id, or set id)")
    diff.add_argument("b", metavar="SNAPSHOT_B", help="the newer snapshot (id, or set id)")
    diff.add_argument("--volume", metavar="NAME", help="the volume, when A and B are set ids")


def main(argv: list[str] | None = None) -> int:
    """`python -m shadowfs.backup_cli ...`: the `shadowfs` CLI (which hooks these commands in)."""
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
