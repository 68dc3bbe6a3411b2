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

from shadowfs.manifest import differences
from tests.e2e import DaemonRun, requires_fuse
from tests.treegen import make_tree, mutate, tree_manifest

pytestmark = requires_fuse

# `python -m shadowfs.backup_cli` is the shadowfs CLI with the backup commands, hooked into cli.py or not
BACKUP_CLI = [sys.executable, "-m", "shadowfs.backup_cli"]


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
    assert inc["base"] == full["image"] and inc["fast_path"] == ["home"]
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


def test_cli_errors(daemon: DaemonRun, tmp_path: Path) -> None:
    daemon.add_volume("v")
    daemon.wait_ready()
    store = str(tmp_path / "media")
    result = run(daemon, "backup", "--media", store, "--type", "incremental", "v", check=False)
    assert result.returncode == 1 and "no base image" in result.stderr
    result = run(daemon, "restore", "--media", store, "--image", "nope", "--to", str(tmp_path / "o"),
                 check=False)
    assert result.returncode == 1 and result.stderr.startswith("shadowfs: ")
    result = run(daemon, "media", "verify", "--media", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1 and "no backup media" in result.stderr
    assert daemon.cli("snapshot", "list", "--json") == []
