"""End to end: a real daemon, a volume protected in place, backups from real snapshot sets through the
browser, the incremental reading its changes from the diff area, restores elsewhere and in place,
`media list/verify` and `diff`, all through the CLI in subprocesses."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shadowfs import media
from shadowfs.backup.job import run_backup
from shadowfs.manifest import differences
from shadowfs.restore.engine import restore
from tests.support.daemon import DaemonRun
from tests.support.treegen import make_tree, mutate, tree_manifest

pytestmark = pytest.mark.fuse

# `python -m shadowfs.backup_cli` is the shadowfs CLI with the backup commands, hooked into cli.py or not
BACKUP_CLI = [sys.executable, "-m", "shadowfs"]


def run(daemon: DaemonRun, *args: str, check: bool = True) -> Any:
    result = subprocess.run(BACKUP_CLI + list(args), env=daemon.env, capture_output=True, text=True,
                            timeout=300, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    if "--json" in args and result.returncode == 0:
        return json.loads(result.stdout)
    return result


def test_backup_restore_through_the_daemon(daemon: DaemonRun, tmp_path: Path) -> None:
    home = daemon.add_volume("home")
    daemon.wait_ready()
    rng = random.Random(21)
    make_tree(str(home), rng)
    store = str(tmp_path / "media")
    full = run(daemon, "backup", "--media", store, "--type", "full", "home", "--keep-snapshot", "--json")
    assert full["type"] == "full" and full["files"] > 30 and full["fast_path"] == []
    snap_full = str(daemon.mount_root / "snapshots" / full["set_id"] / "home")
    expected_full = tree_manifest(snap_full)

    mutate(str(home), rng, steps=15)
    Path(home, "docs", "f0.txt").write_bytes(b"changed for the diff")
    Path(home, "marker-new").write_bytes(b"new file")
    inc = run(daemon, "backup", "--media", store, "--type", "incremental", "home", "--keep-snapshot",
              "--json")
    assert inc["base"] == full["image"] and inc["fast_path"] == ["home"] and inc["direct"] == ["home"]
    snap_inc = str(daemon.mount_root / "snapshots" / inc["set_id"] / "home")
    expected_inc = tree_manifest(snap_inc)

    for image, expected in ((full["image"], expected_full), (inc["image"], expected_inc)):
        out = tmp_path / f"out-{image}"
        result = run(daemon, "restore", "--media", store, "--image", image, "--to", str(out), "--json")
        assert result["chain"][-1] == image
        diff = differences(expected, tree_manifest(str(out / "home")))
        assert not diff, "\n".join(diff)

    verified = run(daemon, "media", "verify", "--media", store, "--json")
    assert verified == {"ok": True, "images": 2, "problems": []}
    listed = run(daemon, "media", "list", "--media", store, "--json")
    assert [i["id"] for i in listed] == [full["image"], inc["image"]]

    changes = run(daemon, "diff", full["set_id"], inc["set_id"], "--volume", "home", "--json")["changes"]
    by_path = {(c["path"], c["change"]): c for c in changes}
    assert ("marker-new", "created") in by_path
    f0 = next(c for c in changes if c["path"] == "docs/f0.txt")
    assert f0["data"] == [[0, 20]] or f0["change"] in ("created", "renamed")

    # without --keep-snapshot the set goes away again
    before = len(daemon.cli("snapshot", "list", "--json"))
    third = run(daemon, "backup", "--media", store, "--type", "differential", "home", "--json")
    assert third["fast_path"] == ["home"] and third["base"] == full["image"]
    assert len(daemon.cli("snapshot", "list", "--json")) == before

    # restore in place: a deleted file comes back through the live mount
    os.unlink(home / "marker-new")
    run(daemon, "restore", "--media", store, "--image", inc["image"], "--json")
    assert (home / "marker-new").read_bytes() == b"new file"


def _image_records(store: str, image: str) -> list[tuple[Any, ...]]:
    return sorted((r.op, r.path, r.kind, r.size, r.mode, r.nlink, r.link, r.target,
                   tuple(sorted(r.xattrs.items())), r.sha256,
                   None if r.data is None else (r.data.how, tuple(map(tuple, r.data.extents))))
                  for r in media.open_image(store, image).records())


@pytest.mark.parametrize("seed", [4, 9])
def test_incremental_read_in_process_matches_the_browser(daemon: DaemonRun, tmp_path: Path,
                                                         seed: int) -> None:
    """The fast path reads the new snapshot in the backup's own process, by inode (`direct`), or
    through the snapshot browser: both store the same records and bytes, and both restore exactly
    the snapshot, for a tree of every kind of object changed in every way."""
    home = daemon.add_volume("home")
    daemon.wait_ready()
    rng = random.Random(seed)
    make_tree(str(home), rng)
    store, state = str(tmp_path / "media"), str(daemon.state)
    full = run_backup(state, store, ["home"], "full", keep_snapshot=True, with_writers=False)
    mutate(str(home), rng, steps=40)
    with open(home / "sparse.img", "r+b") as f:  # fill a hole, and cut data off
        f.seek(5 << 20)
        f.write(b"filled")
        f.truncate(6 << 20)
    records = {}
    for direct in (True, False):
        outcome = run_backup(state, store, ["home"], "incremental", base_id=full.image, keep_snapshot=True,
                             with_writers=False, direct=direct)
        assert outcome.fast_path == ["home"] and outcome.direct == (["home"] if direct else [])
        snap = str(daemon.mount_root / "snapshots" / outcome.set_id / "home")
        out = tmp_path / f"out-{direct}"
        restore(store, outcome.image, str(out))
        diff = differences(tree_manifest(snap), tree_manifest(str(out / "home")))
        assert not diff, "\n".join(diff)
        records[direct] = _image_records(store, outcome.image)
    assert records[True] == records[False]
    assert media.verify(store) == []


def test_cli_errors(daemon: DaemonRun, tmp_path: Path) -> None:
    daemon.add_volume("v")
    daemon.wait_ready()
    store = str(tmp_path / "media")
    result = run(daemon, "backup", "--media", store, "--type", "incremental", "v", check=False)
    assert result.returncode == 2 and "no base image" in result.stderr
    result = run(daemon, "restore", "--media", store, "--image", "nope", "--to", str(tmp_path / "o"),
                 check=False)
    assert result.returncode == 2 and result.stderr.startswith("shadowfs: ")
    result = run(daemon, "media", "verify", "--media", str(tmp_path / "missing"), check=False)
    assert result.returncode == 2 and "no backup media" in result.stderr
    assert daemon.cli("snapshot", "list", "--json") == []
