"""`snapshot expose ID PATH` / `snapshot unexpose PATH` through the real daemon: a snapshot shown
read-only at a path of the user's choice, listed with it, with the volume's inode numbers (two
exposed snapshots show an unchanged file with the same number), and gone cleanly on unexpose, on
the snapshot's deletion, on `volume remove` and on the daemon's stop."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.daemon.test_daemon import cli_error
from tests.support.daemon import DaemonRun


def _exposed_mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.startswith("shadowfs-snapshot ")]


def test_two_exposed_snapshots_share_the_numbers_of_unchanged_files(daemon: DaemonRun,
                                                                   tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "same").write_text("unchanged")
    (a / "f").write_text("one")
    first = daemon.snapshot("a")
    (a / "f").write_text("two, longer")
    second = daemon.snapshot("a")
    there = [tmp_path / "first", tmp_path / "second"]
    for path, taken in zip(there, (first, second), strict=True):
        path.mkdir()
        reply = daemon.cli("snapshot", "expose", taken["snapshots"][0]["id"][:8], str(path), "--json")
        assert reply == {"snapshot": taken["snapshots"][0]["id"], "set_id": taken["set_id"], "volume": "a",
                         "path": str(path)}
    assert (there[0] / "f").read_text() == "one" and (there[1] / "f").read_text() == "two, longer"
    same = [os.stat(p / "same") for p in there]
    assert same[0].st_ino == same[1].st_ino == os.stat(a / "same").st_ino
    assert (same[0].st_size, same[0].st_mtime_ns, same[0].st_ctime_ns) == (
        same[1].st_size, same[1].st_mtime_ns, same[1].st_ctime_ns)
    with pytest.raises(OSError) as caught:
        (there[0] / "f").write_text("no")
    assert caught.value.errno == errno.EROFS
    listed = {s["id"]: s["exposed"] for s in daemon.cli("snapshot", "list", "--json")}
    assert listed == {first["snapshots"][0]["id"]: [str(there[0])],
                      second["snapshots"][0]["id"]: [str(there[1])]}
    # refusals: a path in use, a path inside a volume, a path that is not an empty directory
    assert "already shows snapshot" in cli_error(daemon, "snapshot", "expose", second["set_id"],
                                                 str(there[0]), code=2)
    (a / "inside").mkdir()
    assert "which shadowfs serves itself" in cli_error(daemon, "snapshot", "expose", second["set_id"],
                                                       str(a / "inside"), code=2)
    assert "not an existing directory" in cli_error(daemon, "snapshot", "expose", second["set_id"],
                                                    str(tmp_path / "nope"), code=2)
    # unexpose: the directory is empty again; deleting a snapshot ends its exposure too
    daemon.cli("snapshot", "unexpose", str(there[0]))
    assert os.listdir(there[0]) == [] and str(there[0]) not in _exposed_mounts()
    assert "no snapshot is exposed at" in cli_error(daemon, "snapshot", "unexpose", str(there[0]), code=2)
    daemon.cli("snapshot", "delete", second["set_id"])
    assert _exposed_mounts() == [] and os.listdir(there[1]) == []


def test_volume_remove_and_daemon_stop_end_exposures(daemon: DaemonRun, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    (a / "f").write_text("x")
    taken = daemon.snapshot("a", "b")
    ids = {s["volume"]: s["id"] for s in taken["snapshots"]}
    assert "has 2 volumes" in cli_error(daemon, "snapshot", "expose", taken["set_id"], str(tmp_path), code=2)
    for volume in ("a", "b"):
        (tmp_path / volume).mkdir()
        daemon.cli("snapshot", "expose", ids[volume], str(tmp_path / volume))
    assert sorted(_exposed_mounts()) == [str(tmp_path / "a"), str(tmp_path / "b")]
    daemon.cli("volume", "remove", "b", "--force")
    assert _exposed_mounts() == [str(tmp_path / "a")]
    daemon.stop()
    assert _exposed_mounts() == []


def test_an_exposure_whose_process_died_is_taken_away_cleanly(daemon: DaemonRun, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "f").write_text("x")
    taken = daemon.snapshot("a")
    there = tmp_path / "there"
    there.mkdir()
    daemon.cli("snapshot", "expose", taken["set_id"], str(there))
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()
            and _cmdline(int(p)).count(str(there)) and "shadowfs.browser.expose_process" in _cmdline(int(p))]
    assert len(pids) == 1
    os.kill(pids[0], 9)  # no chance to unmount: its mount is left dead (ENOTCONN)
    daemon.cli("snapshot", "unexpose", str(there))
    assert _exposed_mounts() == [] and os.listdir(there) == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
