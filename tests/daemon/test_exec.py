"""`shadowfs exec` through the real daemon: the command sees each volume's snapshot, read-only, at the
volume's own path, with the set's ids in its environment, while the live volume keeps changing
outside; its exit status is the command's; the set goes afterwards unless --keep; and an unchanged
file shows the same inode number, size and times in two runs (what restic and borg compare)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.daemon.test_daemon import cli_error
from tests.support.daemon import SHADOWFS, DaemonRun

PROBE = r"""
import json, os, sys, time
root, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):  # the test changes the live volume meanwhile
    time.sleep(0.02)
out = {"f": open(os.path.join(root, "f")).read(), "names": sorted(os.listdir(root)),
       "env": {k: v for k, v in os.environ.items() if k.startswith(("SHADOWFS_SET", "SHADOWFS_SNAPSHOT"))}}
try:
    open(os.path.join(root, "f"), "w")
except OSError as exc:
    out["write"] = exc.strerror
st = os.stat(os.path.join(root, "same"))
out["same"] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
print(json.dumps(out))
sys.exit(7)
"""


def _exec(daemon: DaemonRun, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SHADOWFS + ["exec", *args], env=daemon.env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_exec_shows_the_snapshot_at_the_volume_path(daemon: DaemonRun, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b-2")
    daemon.wait_ready()
    (a / "f").write_text("at the snapshot")
    (a / "same").write_text("never changes")
    (b / "g").write_text("other volume")
    go = tmp_path / "go"

    def change_live_then_go() -> None:  # while the command waits: the live volume moves on
        for _ in range(600):
            if daemon.cli("snapshot", "list", "--json"):
                break
        (a / "f").write_text("written after the snapshot")
        (a / "new").write_text("born after the snapshot")
        go.touch()

    changer = threading.Thread(target=change_live_then_go)
    changer.start()
    result = _exec(daemon, "a", "b-2", "--", sys.executable, "-c", PROBE, str(a), str(go))
    changer.join()
    assert result.returncode == 7, result.stderr
    seen = json.loads(result.stdout)
    assert seen["f"] == "at the snapshot" and seen["names"] == ["f", "same"]
    assert seen["write"] == "Read-only file system"
    assert set(seen["env"]) == {"SHADOWFS_SET_ID", "SHADOWFS_SNAPSHOT_A", "SHADOWFS_SNAPSHOT_B_2"}
    assert seen["same"][0] == os.stat(a / "same").st_ino  # the volume's own inode number
    # outside the command nothing changed: the live volume has the later writes, no mount is left
    assert (a / "f").read_text() == "written after the snapshot"
    assert "shadowfs-snapshot " not in Path("/proc/self/mounts").read_text()  # the exposed fsname
    assert daemon.cli("snapshot", "list", "--json") == []  # the set went with the command

    # a second run on a new set: the unchanged file has the same number, size and times
    go.touch()
    again = _exec(daemon, "--keep", "a", "--", sys.executable, "-c", PROBE, str(a), str(go))
    assert again.returncode == 7, again.stderr
    assert json.loads(again.stdout)["same"] == seen["same"]
    kept = daemon.cli("snapshot", "list", "--json")
    assert [s["id"] for s in kept] == [json.loads(again.stdout)["env"]["SHADOWFS_SNAPSHOT_A"]]
    assert "kept snapshot set" in again.stderr


def test_exec_refuses_bad_calls_before_taking_a_set(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.wait_ready()
    assert "put -- between the volumes and the command" in cli_error(daemon, "exec", "a", "true", code=2)
    assert "give the command to run after --" in cli_error(daemon, "exec", "a", "--", code=2)
    assert "unknown volume nope" in cli_error(daemon, "exec", "nope", "--", "true", code=2)
    missing = _exec(daemon, "a", "--", "/nonexistent/program")
    assert missing.returncode == 127 and "cannot run /nonexistent/program" in missing.stderr
    assert daemon.cli("snapshot", "list", "--json") == []
