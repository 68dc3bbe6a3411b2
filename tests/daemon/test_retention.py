"""Holds, prune and the diff area's size through the real daemon and CLI: a held snapshot is
deleted neither by `snapshot delete` (without --force), nor by `snapshot prune`, nor by the
diff area's limit, which deletes the oldest unheld snapshot first."""

from __future__ import annotations

from pathlib import Path

from tests.daemon.test_daemon import cli_error, wait_for
from tests.support.daemon import DaemonRun


def _ids(run: DaemonRun) -> set[str]:
    return {s["id"] for s in run.cli("snapshot", "list", "--json")}


def _held(run: DaemonRun) -> dict[str, str | None]:
    return {s["id"]: s["held"] for s in run.cli("snapshot", "list", "--json")}


def test_a_held_snapshot_is_deleted_only_with_force_or_after_release(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b")
    daemon.wait_ready()
    (a / "f").write_text("one")
    (b / "g").write_text("uno")
    taken = daemon.snapshot("a", "b")
    a_snap = next(s["id"] for s in taken["snapshots"] if s["volume"] == "a")
    held = daemon.cli("snapshot", "hold", a_snap[:8], "--json")
    assert [(h["id"], h["volume"]) for h in held] == [(a_snap, "a")] and held[0]["held"].endswith("Z")
    assert _held(daemon)[a_snap] == held[0]["held"]
    # the set holds a held snapshot: deleting the set deletes nothing, and says which one is held
    message = cli_error(daemon, "snapshot", "delete", taken["set_id"], code=2)
    assert f"snapshot {a_snap} of volume a is held" in message and "--force" in message
    assert len(_ids(daemon)) == 2
    # still held after a daemon restart (the hold lives in the diff area)
    daemon.stop()
    daemon.start()
    daemon.wait_ready()
    assert _held(daemon)[a_snap] == held[0]["held"]
    assert Path(taken["snapshots"][0]["path"]).exists()
    released = daemon.cli("snapshot", "release", taken["set_id"], "--json")
    assert {r["held"] for r in released} == {None} and len(released) == 2
    daemon.cli("snapshot", "hold", a_snap)
    deleted = daemon.cli("snapshot", "delete", taken["set_id"], "--force", "--json")
    assert len(deleted["deleted"]) == 2 and _ids(daemon) == set()


def test_prune_keeps_what_the_rules_and_the_holds_keep(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    sets = []
    for n in range(5):
        (a / "f").write_text(str(n))
        sets.append(daemon.snapshot("a", "b"))
    oldest_a = next(s["id"] for s in sets[0]["snapshots"] if s["volume"] == "a")
    daemon.cli("snapshot", "hold", oldest_a)
    dry = daemon.cli("snapshot", "prune", "--keep-last", "2", "--volume", "a", "--dry-run", "--json")
    assert dry["dry_run"] is True and dry["freed"] == 0
    assert len(_ids(daemon)) == 10  # nothing went
    newest_two = {next(s["id"] for s in t["snapshots"] if s["volume"] == "a") for t in sets[3:]}
    assert {k["id"]: k["reasons"] for k in dry["keep"]} == {
        **{i: ["last"] for i in newest_two}, oldest_a: ["held"]}
    assert {r["volume"] for r in dry["remove"]} == {"a"} and len(dry["remove"]) == 2
    done = daemon.cli("snapshot", "prune", "--keep-last", "2", "--volume", "a", "--json")
    assert sorted(r["id"] for r in done["remove"]) == sorted(r["id"] for r in dry["remove"])
    left = daemon.cli("snapshot", "list", "--json")
    assert sorted(s["id"] for s in left if s["volume"] == "a") == sorted(newest_two | {oldest_a})
    assert len([s for s in left if s["volume"] == "b"]) == 5  # --volume a left b alone
    # every volume on its own: b keeps its newest one, a its newest one and the held one
    daemon.cli("snapshot", "prune", "--keep-last", "1", "--json")
    left = daemon.cli("snapshot", "list", "--json")
    assert [s["id"] for s in left if s["volume"] == "b"] == [
        next(s["id"] for s in sets[4]["snapshots"] if s["volume"] == "b")]
    assert sorted(s["id"] for s in left if s["volume"] == "a") == sorted(
        [next(s["id"] for s in sets[4]["snapshots"] if s["volume"] == "a"), oldest_a])
    assert "give at least one --keep-* rule" in cli_error(daemon, "snapshot", "prune", code=2)
    assert "unknown volume" in cli_error(daemon, "snapshot", "prune", "--keep-last", "1", "--volume", "c",
                                         code=2)


def test_the_limit_deletes_the_oldest_unheld_snapshot_and_resize_applies_at_once(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a", "--max-diff-area", "64M")
    daemon.wait_ready()
    (a / "big").write_bytes(b"\1" * (3 << 20))
    first = daemon.snapshot("a")["snapshots"][0]["id"]
    daemon.cli("snapshot", "hold", first)
    (a / "big").write_bytes(b"\2" * (3 << 20))
    second = daemon.snapshot("a")["snapshots"][0]["id"]
    (a / "big").write_bytes(b"\3" * (3 << 20))
    third = daemon.snapshot("a")["snapshots"][0]["id"]
    (a / "big").write_bytes(b"\4" * (3 << 20))
    assert _ids(daemon) == {first, second, third}
    # about 3 MiB captured under each: a 7 MiB limit drops one snapshot, the oldest unheld
    volume = daemon.cli("volume", "set", "a", "--max-diff-area", "7M", "--json")
    assert volume["max_diff_area_bytes"] == 7 << 20
    wait_for(lambda: _ids(daemon) == {first, third}, what="the oldest unheld snapshot to go")
    assert daemon.cli("volume", "list", "--json")[0]["max_diff_area_bytes"] == 7 << 20
    # every snapshot held: over the limit, none is deleted
    daemon.cli("snapshot", "hold", third)
    daemon.cli("volume", "set", "a", "--max-diff-area", "1M")
    (a / "other").write_bytes(b"x" * (1 << 20))
    assert _ids(daemon) == {first, third}
    assert "every snapshot is held" in daemon.log.read_text()
    # the new size outlives a restart
    daemon.stop()
    daemon.start()
    daemon.wait_ready()
    assert daemon.cli("volume", "list", "--json")[0]["max_diff_area_bytes"] == 1 << 20
    assert "invalid size" in cli_error(daemon, "volume", "set", "a", "--max-diff-area", "lots", code=2)
    assert "unknown volume" in cli_error(daemon, "volume", "set", "nope", "--max-diff-area", "1G", code=2)


def test_a_labelled_prune_leaves_every_other_set_alone(daemon: DaemonRun) -> None:
    """What the timeline timer runs: sets made with --label timeline, pruned with --label timeline;
    a set a person made (no label, or another) is neither kept nor removed by it."""
    a = daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    timeline = []
    for n in range(3):
        (a / "f").write_text(str(n))
        timeline.append(daemon.cli("snapshot", "create", "--all", "--label", "timeline", "--json"))
    mine = daemon.snapshot("a")
    other = daemon.cli("snapshot", "create", "a", "--label", "nightly", "--json")
    labels = {s["set_id"]: s["label"] for s in daemon.cli("snapshot", "list", "--json")}
    assert labels == {**{t["set_id"]: "timeline" for t in timeline}, mine["set_id"]: None,
                      other["set_id"]: "nightly"}
    assert {s["volume"] for s in timeline[0]["snapshots"]} == {"a", "b"}  # --all: every volume
    pruned = daemon.cli("snapshot", "prune", "--label", "timeline", "--keep-last", "1", "--json")
    assert {r["set_id"] for r in pruned["remove"]} == {t["set_id"] for t in timeline[:2]}
    assert {k["set_id"] for k in pruned["keep"]} == {timeline[2]["set_id"]}
    assert set(labels) - {t["set_id"] for t in timeline[:2]} == {
        s["set_id"] for s in daemon.cli("snapshot", "list", "--json")}
    assert "must be a label" in cli_error(daemon, "snapshot", "create", "a", "--label", "no spaces",
                                          code=2)
    assert "name the volumes" in cli_error(daemon, "snapshot", "create", code=2)
