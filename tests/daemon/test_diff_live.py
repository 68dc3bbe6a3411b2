"""`shadowfs diff SNAPSHOT --live`: what changed since a snapshot, against the volume as it is now,
through the real daemon: the same changes a second snapshot taken now shows against the first."""

from __future__ import annotations

import os

from tests.daemon.test_daemon import cli_error
from tests.support.daemon import DaemonRun


def test_diff_against_the_live_volume_is_the_diff_against_a_snapshot_taken_now(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "f").write_text("one")
    (a / "g").write_text("gone soon")
    (a / "d").mkdir()
    (a / "d" / "inner").write_text("x")
    first = daemon.snapshot("a")
    snap = first["snapshots"][0]["id"]
    assert daemon.cli("diff", snap[:8], "--live", "--json")["changes"] == []
    (a / "f").write_text("two!")
    (a / "g").unlink()
    (a / "h").write_text("new")
    os.rename(a / "d", a / "e")
    live = daemon.cli("diff", snap, "--live", "--json")
    assert (live["from"], live["to"]) == (snap, "live")
    by_path = {c["path"]: c["change"] for c in live["changes"]}
    assert by_path["f"] == "modified" and by_path["g"] == "deleted" and by_path["h"] == "created"
    assert by_path["e"] == "renamed" and next(c for c in live["changes"] if c["path"] == "e")["from"] == "d"
    second = daemon.snapshot("a")
    against_snapshot = daemon.cli("diff", snap, second["snapshots"][0]["id"], "--json")["changes"]
    assert live["changes"] == against_snapshot
    assert "give the newer snapshot B, or --live" in cli_error(daemon, "diff", snap, code=2)
    assert "give the newer snapshot B, or --live" in cli_error(
        daemon, "diff", snap, second["snapshots"][0]["id"], "--live", code=2)
