"""The daemon end to end: a real `shadowfs daemon` subprocess, real FUSE mounts, driven through the CLI.

Covers supervision (ready, restart after a crash, stale mounts of a killed
daemon), the CLI socket (SO_PEERCRED), volume add/list/remove with their
validation, and snapshot sets created, listed and deleted by snapshot or set id.
The `daemon` fixture (tests/support/daemon.py) always stops the daemon and unmounts only
what is left under the test's own temporary directory.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shadowfs import statedir
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import BackingIno
from shadowfs.ipc import frames
from shadowfs.linux import busy, mounts
from tests.support.daemon import SHADOWFS, DaemonRun

pytestmark = pytest.mark.fuse


def cli_error(run: DaemonRun, *args: str, code: int) -> str:
    """Run a CLI command that must fail with exit `code`; return its one error line."""
    result = run.cli(*args, check=False)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shadowfs: "), result.stderr
    return lines[0]


def mounts_under(base: Path) -> list[str]:
    root = str(base.resolve())
    return [p for p in mounts.fuse_mounts() if p == root or p.startswith(root + "/")]


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def raw_request(state: Path, obj: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(state / "daemon.sock"))
        frames.send_frame(sock, {**obj, "id": 9})
        reply, fds = frames.recv_frame(sock)
    frames.close_fds(fds)
    return reply


# --- without volumes (browser only) -----------------------------------------------------------


def test_start_status_errors_and_clean_stop(daemon: DaemonRun) -> None:
    status = daemon.cli("status", "--json")
    browser_mount = str(daemon.mount_root / "snapshots")
    assert status["browser"]["state"] == "running" and status["browser"]["mount"] == browser_mount
    assert status["volumes"] == [] and status["state_dir"] == str(daemon.state)
    assert mounts.fuse_mounts().get(browser_mount) == "fuse.shadowfs"
    assert daemon.cli("snapshot", "list", "--json") == []
    assert daemon.cli("volume", "list", "--json") == []
    assert "unknown volume 'nope'" in cli_error(daemon, "snapshot", "create", "nope", code=2)
    missing = "3f2b8a52-5f8e-4a55-9a4c-0d3f8e0b7c11"
    error = cli_error(daemon, "snapshot", "delete", missing, code=2)
    assert f"unknown snapshot or snapshot set {missing}" in error
    assert "unknown volume 'nope'" in cli_error(daemon, "volume", "remove", "nope", code=2)
    assert "does not exist" in cli_error(daemon, "volume", "add", "x", str(daemon.base / "missing"), code=2)
    assert "contains the state directory" in cli_error(daemon, "volume", "add", "x", str(daemon.base), code=2)

    second = subprocess.run(SHADOWFS + ["daemon"], env=daemon.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip().endswith(
        f"shadowfs: another shadowfs daemon is running on state {daemon.state} (pid {daemon.proc.pid})")

    assert raw_request(daemon.state, {"op": "no_such_op"})["error"] == "unknown operation 'no_such_op'"
    reply = raw_request(daemon.state, {"op": "snapshot_create"})
    assert "'volumes' must be a non-empty list" in reply["error"]

    proc = daemon.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    daemon.proc = None
    assert mounts_under(daemon.base) == []
    assert not (daemon.state / "daemon.sock").exists()
    with statedir.DaemonLock(str(daemon.state)):
        pass


def test_malformed_client_frames_do_not_hurt_the_daemon(daemon: DaemonRun) -> None:
    for garbage in (b"\x00\x00\x00\x05[1,2", b"\xff\xff\xff\xff", b"\x00\x00\x00\x02[]"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.state / "daemon.sock"))
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            reply, _ = frames.recv_frame(sock)  # an error reply naming the problem...
            assert reply["ok"] is False and reply["error"].startswith("malformed frame: ")
            assert sock.recv(100) == b""  # ...then the daemon drops the connection
    assert daemon.cli("status", "--json")["browser"]["state"] == "running"


def test_other_users_are_refused(daemon: DaemonRun) -> None:
    """SO_PEERCRED: a process of another uid that can reach the socket gets "permission denied"."""
    sock_path = daemon.state / "daemon.sock"
    os.chmod(sock_path, 0o666)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, ask for the status
        try:
            os.close(read_end)
            # the state dir is 0711 but pytest's tmp dirs are 0700: reach it through an O_PATH descriptor
            state_fd = os.open(daemon.state, os.O_PATH)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(f"/proc/self/fd/{state_fd}/{sock_path.name}")
                frames.send_frame(sock, {"op": "status", "id": 1})
                reply, _ = frames.recv_frame(sock)
            os.write(write_end, json.dumps(reply).encode())
        except BaseException as exc:  # noqa: B036 - report anything to the parent
            os.write(write_end, json.dumps({"child_error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert json.loads(data) == {"id": 1, "ok": False, "error": "permission denied", "kind": "denied"}


def test_stale_mounts_of_a_killed_daemon_are_cleaned_up(daemon: DaemonRun) -> None:
    browser_pid = daemon.cli("status", "--json")["browser"]["pid"]
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)  # so it neither restarts the browser nor lets it exit cleanly
    os.kill(browser_pid, signal.SIGKILL)
    daemon.proc.kill()
    daemon.proc.wait()
    browser_mount = daemon.mount_root / "snapshots"
    wait_for(lambda: _dead(browser_mount), what="the browser mount to be dead")
    assert str(browser_mount) in mounts_under(daemon.base)
    daemon.start()  # a new daemon on the same state
    status = daemon.cli("status", "--json")
    assert status["browser"]["state"] == "running" and status["browser"]["pid"] != browser_pid
    assert "by-time" in os.listdir(browser_mount)
    assert mounts_under(daemon.base) == [str(browser_mount)]


def _dead(path: Path) -> bool:
    try:
        os.listdir(path)
    except OSError:
        return True
    return False


def test_state_dir_inside_a_protected_tree_is_refused_at_start(tmp_path: Path) -> None:
    protected = tmp_path / "protected"
    state = protected / "state"
    state.mkdir(parents=True)
    table = statedir.VolumeTable.load(str(state), str(tmp_path / "mnt"))
    table.add(statedir.Volume("p", table.next_index, str(protected), str(protected), 1 << 30,
                              statedir.utc_now()))
    command = ["daemon", "--state", str(state), "--mount-root", str(tmp_path / "mnt")]
    result = subprocess.run(SHADOWFS + command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"shadowfs: the state directory {state} is inside volume 'p' ({protected}); "
        "it cannot be inside a protected tree")
    assert mounts_under(tmp_path) == []


# --- with volumes -----------------------------------------------------------------------------


def test_volumes_and_snapshot_sets(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b", "--max-diff-area", "256M")
    daemon.wait_ready()
    volumes = daemon.cli("volume", "list", "--json")
    assert [(v["name"], v["index"], v["backing"], v["mount"], v["snapshots"]) for v in volumes] == [
        ("a", 1, str(a), str(a), 0), ("b", 2, str(b), str(b), 0)]
    assert volumes[1]["max_diff_area_bytes"] == 256 << 20
    assert str(a) in mounts_under(daemon.base) and str(b) in mounts_under(daemon.base)

    (a / "f").write_text("one")
    (b / "g").write_text("uno")
    first = daemon.snapshot("a", "b")
    paths = {s["volume"]: s["path"] for s in first["snapshots"]}
    assert paths == {v: str(daemon.mount_root / "snapshots" / first["set_id"] / v) for v in ("a", "b")}
    assert first["created"].endswith("Z")
    (a / "f").write_text("two")
    (b / "g").write_text("dos")
    assert Path(paths["a"], "f").read_text() == "one" and Path(paths["b"], "g").read_text() == "uno"
    second = daemon.snapshot("a")
    assert Path(second["snapshots"][0]["path"], "f").read_text() == "two"

    listing = daemon.cli("snapshot", "list", "--json")
    assert sorted((s["set_id"], s["volume"]) for s in listing) == sorted(
        [(first["set_id"], "a"), (first["set_id"], "b"), (second["set_id"], "a")])
    snapshots = daemon.mount_root / "snapshots"
    assert all(s["path"] == str(snapshots / s["set_id"] / s["volume"]) for s in listing)
    assert {v["name"]: v["snapshots"] for v in daemon.cli("volume", "list", "--json")} == {"a": 2, "b": 1}

    b_snapshot = next(s["id"] for s in first["snapshots"] if s["volume"] == "b")
    daemon.cli("snapshot", "delete", b_snapshot)
    assert len(daemon.cli("snapshot", "list", "--json")) == 2
    daemon.cli("snapshot", "delete", first["set_id"])
    assert [s["set_id"] for s in daemon.cli("snapshot", "list", "--json")] == [second["set_id"]]
    assert "unknown snapshot or snapshot set" in cli_error(daemon, "snapshot", "delete", first["set_id"],
                                                           code=2)
    assert Path(second["snapshots"][0]["path"], "f").read_text() == "two"
    daemon.cli("snapshot", "delete", second["set_id"])
    assert daemon.cli("snapshot", "list", "--json") == []
    assert (a / "f").read_text() == "two"


def test_snapshot_create_reports_how_long_each_volume_was_held(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    for volumes in (("a", "b"), ("b",)):
        held = daemon.snapshot(*volumes)["held_ms"]
        assert sorted(held) == sorted(volumes)
        assert all(isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0
                   for ms in held.values())


def test_volume_backing_hands_over_the_backing_directory(daemon: DaemonRun) -> None:
    """volume_backing: a descriptor of the backing directory under the in-place mount (for a backup
    that reads a snapshot in its own process); an unknown volume is an error."""
    backing = daemon.add_volume("a")
    daemon.wait_ready()
    (backing / "seen").write_bytes(b"x")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(daemon.state / "daemon.sock"))
        frames.send_frame(sock, {"op": "volume_backing", "name": "a", "id": 1})
        reply, fds = frames.recv_frame(sock)
    try:
        assert reply["ok"] and reply["volume"] == "a" and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == reply["root_ino"]
        names = os.listdir(fds[0])
        assert "seen" in names and ".shadowfs" in names  # the backing directory itself, not the mount
        assert ".shadowfs" not in os.listdir(backing)
    finally:
        frames.close_fds(fds)
    assert raw_request(daemon.state, {"op": "volume_backing", "name": "nope"})["error"] == "no volume 'nope'"
    assert "missing" in raw_request(daemon.state, {"op": "volume_backing"})["error"]


def test_volume_validation_and_removal(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "sub").mkdir()
    other = daemon.base / "other"
    (other / "inner").mkdir(parents=True)
    assert "is inside volume 'a'" in cli_error(daemon, "volume", "add", "x", str(a / "sub"), code=2)
    assert "already exists" in cli_error(daemon, "volume", "add", "a", str(other), code=2)
    assert "contains the state directory" in cli_error(daemon, "volume", "add", "x", str(daemon.base), code=2)
    assert "overlaps the mount of volume 'a'" in cli_error(
        daemon, "volume", "add", "x", str(other), "--mount", str(a / "m"), code=2)
    assert "named twice" in cli_error(daemon, "snapshot", "create", "a", "a", code=2)
    bad_size = {"op": "volume_add", "name": "x", "backing": str(other), "max_diff_area_bytes": "10X"}
    assert "invalid size" in raw_request(daemon.state, bad_size)["error"]
    assert "must not contain '/'" in raw_request(
        daemon.state, {"op": "volume_add", "name": "x/y", "backing": str(other)})["error"]

    daemon.add_volume("inner-vol")
    inner = daemon.base / "outer" / "inner"
    inner.mkdir(parents=True)
    daemon.cli("volume", "add", "inner", str(inner))
    error = cli_error(daemon, "volume", "add", "outer", str(daemon.base / "outer"), code=2)
    assert "contains volume 'inner'" in error

    (a / "f").write_text("data")
    daemon.snapshot("a")
    assert "has 1 snapshot(s)" in cli_error(daemon, "volume", "remove", "a", code=2)
    daemon.cli("volume", "remove", "a", "--force")
    assert str(a) not in mounts_under(daemon.base)
    assert not (daemon.state / "volumes" / "a").exists()
    assert not (a / ".shadowfs").exists()  # its graveyard went with its snapshots
    assert (a / "f").read_text() == "data"
    assert [v["name"] for v in daemon.cli("volume", "list", "--json")] == ["inner-vol", "inner"]
    assert daemon.cli("snapshot", "list", "--json") == []
    readded = daemon.add_volume("a")
    assert next(v["index"] for v in daemon.cli("volume", "list", "--json") if v["name"] == "a") == 4
    assert readded == a


def test_volume_add_refuses_a_busy_tree_unless_forced(daemon: DaemonRun) -> None:
    daemon.add_volume("a")  # a mount process and the browser hold volume a's tree, none of the new one
    daemon.wait_ready()
    backing = daemon.base / "busy"
    (backing / "sub").mkdir(parents=True)
    (backing / "sub" / "a.txt").write_text("held")
    with open(backing / "sub" / "a.txt") as held:
        holder = subprocess.Popen(["sleep", "600"], stdin=held)
    try:
        # the daemon's processes hold nothing there, so leaving them out of the count changes nothing
        assert {h.pid for h in busy.holders(str(backing))} == {holder.pid}
        result = daemon.cli("volume", "add", "busy", str(backing), "--json", check=False)
        assert result.returncode == 2, result
        assert f"pid {holder.pid} (sleep): open file sub/a.txt" in result.stderr
        assert "--force" in result.stderr and len(result.stderr.splitlines()) == 1
        assert json.loads(result.stdout)["kind"] == "busy"
        assert [v["name"] for v in daemon.cli("volume", "list", "--json")] == ["a"]
        assert not (daemon.state / "volumes" / "busy").exists() and not (backing / ".shadowfs").exists()
        assert not mounts_under(backing)

        daemon.cli("volume", "add", "busy", str(backing), "--force")
        daemon.wait_ready()
        assert [v["name"] for v in daemon.cli("volume", "list", "--json")] == ["a", "busy"]
        assert mounts.fuse_mounts().get(str(backing.resolve())) == "fuse.shadowfs"
        logged = [line for line in daemon.log.read_text().splitlines() if "with --force" in line]
        assert len(logged) == 1 and "WARNING" in logged[0]
        assert f"pid {holder.pid} (sleep): open file sub/a.txt" in logged[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_mount_process_is_restarted(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    process = daemon.cli("status", "--json")["volumes"][0]["process"]
    os.kill(process["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        info = daemon.cli("status", "--json")["volumes"][0]["process"]
        return info if info["restarts"] >= 1 and info["state"] == "running" else None

    info = wait_for(restarted, what="the mount process to come back")
    assert info["pid"] != process["pid"]
    (a / "after").write_text("ok")
    snap = daemon.snapshot("a")
    assert Path(snap["snapshots"][0]["path"], "after").read_text() == "ok"


def test_a_hold_that_times_out_aborts_the_whole_set(daemon: DaemonRun) -> None:
    """One volume's mount process is frozen: the set fails after the 10 s hold limit, nothing of it
    stays visible, and the other volume's gate is open again."""
    a = daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    frozen = next(v["process"]["pid"] for v in daemon.cli("status", "--json")["volumes"] if v["name"] == "b")
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        error = cli_error(daemon, "snapshot", "create", "a", "b", code=1)
        assert time.monotonic() - started < 30
        assert "snapshot set aborted" in error and "hold on volume b" in error
        assert daemon.cli("snapshot", "list", "--json") == []
        (a / "still-writable").write_text("yes")  # a's gate was released
    finally:
        os.kill(frozen, signal.SIGCONT)
    daemon.wait_ready()
    # b now sees the stale hold; it may keep its gate closed until that hold's own 10 s limit
    snap = wait_for(lambda: _try_snapshot(daemon, "a", "b"), timeout=30, what="a snapshot set to succeed")
    assert Path(snap["snapshots"][0]["path"], "still-writable").read_text() == "yes"
    assert len(daemon.cli("snapshot", "list", "--json")) == 2


def test_a_full_diff_area_drops_the_oldest_snapshot_with_a_logged_event(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a", "--max-diff-area", "1M")
    daemon.wait_ready()
    (a / "big").write_bytes(b"\1" * (3 << 20))
    first = daemon.snapshot("a")["snapshots"][0]["id"]
    (a / "big").write_bytes(b"\2" * (3 << 20))
    wait_for(lambda: daemon.cli("snapshot", "list", "--json") == [], what="the oldest snapshot to go")
    wait_for(lambda: f"snapshot {first}" in daemon.log.read_text(), what="the daemon to log the event")
    line = next(x for x in daemon.log.read_text().splitlines()
                if f"snapshot {first}" in x and "was deleted" in x)
    assert "WARNING" in line and "volume a" in line and "diff area full" in line


def _try_snapshot(run: DaemonRun, *volumes: str) -> dict[str, Any] | None:
    result = run.cli("snapshot", "create", *volumes, "--json", check=False)
    return result if isinstance(result, dict) else None


def test_damaged_objects_are_counted_and_listed(daemon: DaemonRun) -> None:
    """Design §9.3: objects marked in a stopped daemon's diff area are counted per snapshot by
    `snapshot list`, listed by `snapshot damage`, and fail with EIO in the browser after a restart."""
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "f").write_text("one")
    (a / "g").write_text("two")
    first = daemon.snapshot("a")
    first_id = first["snapshots"][0]["id"]
    assert [s["damaged_objects"] for s in daemon.cli("snapshot", "list", "--json")] == [0]
    assert daemon.cli("snapshot", "damage", first_id, "--json")["damaged"] == []
    assert daemon.cli("snapshot", "damage", first_id).stdout == "no damaged objects\n"
    daemon.stop()
    ino_f, ino_g = (a / "f").stat().st_ino, (a / "g").stat().st_ino
    area = DiffArea.open(statedir.diff_area_path(str(daemon.state), "a"))
    try:
        with area.write() as txn:
            assert area.mark_damaged(txn, BackingIno(ino_f), "f", "written while unprotected",
                                     "2026-11-22T08:00:00Z")
            assert area.mark_damaged(txn, BackingIno(ino_g), None, "found by inode",
                                     "2026-11-22T08:00:01Z")
    finally:
        area.close()
    daemon.start()
    daemon.wait_ready()
    second = daemon.snapshot("a")  # after the marks: nothing damaged in it
    listing = {s["id"]: s for s in daemon.cli("snapshot", "list", "--json")}
    assert listing[first_id]["damaged_objects"] == 2
    assert listing[second["snapshots"][0]["id"]]["damaged_objects"] == 0
    found_f, found_g = "2026-11-22T08:00:00Z", "2026-11-22T08:00:01Z"
    damaged = sorted([{"ino": ino_f, "path": "f", "cause": "written while unprotected", "found": found_f},
                      {"ino": ino_g, "path": None, "cause": "found by inode", "found": found_g}],
                     key=lambda d: d["ino"])
    assert daemon.cli("snapshot", "damage", first_id, "--json") == {
        "snapshot": first_id, "volume": "a", "set_id": first["set_id"], "damaged": damaged, "total": 2}
    human = daemon.cli("snapshot", "damage", first_id).stdout.splitlines()
    assert sorted(human) == sorted([f"f  written while unprotected, found {found_f}",
                                    f"(inode {ino_g}, path unknown)  found by inode, found {found_g}"])
    table = daemon.cli("snapshot", "list").stdout.splitlines()
    assert "DAMAGED" in table[0].split() and any(first_id in line and " 2 " in line for line in table)
    with pytest.raises(OSError) as caught:
        Path(first["snapshots"][0]["path"], "f").read_text()
    assert caught.value.errno == errno.EIO
    assert Path(second["snapshots"][0]["path"], "f").read_text() == "one"
    missing = "3f2b8a52-5f8e-4a55-9a4c-0d3f8e0b7c11"
    assert cli_error(daemon, "snapshot", "damage", missing, code=2) == f"shadowfs: unknown snapshot {missing}"
    assert "is a snapshot set" in cli_error(daemon, "snapshot", "damage", first["set_id"], code=2)
    daemon.cli("snapshot", "delete", first["set_id"])  # the last snapshot the marks damage
    assert [s["damaged_objects"] for s in daemon.cli("snapshot", "list", "--json")] == [0]


def test_ids_are_accepted_by_unique_prefix(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.wait_ready()
    sets = [daemon.snapshot("a") for _ in range(3)]
    snapshot = sets[0]["snapshots"][0]["id"]
    assert daemon.cli("snapshot", "damage", snapshot[:8], "--json")["snapshot"] == snapshot
    # a prefix nothing has is refused (ambiguous prefixes: tests/unit/test_cli_ids.py)
    unused = next(p for p in ("0000", "ffff", "abcd", "1234")
                  if not any(x.startswith(p) for s in sets for x in (s["set_id"], s["snapshots"][0]["id"])))
    assert f"no snapshot or set id starts with '{unused}'" in cli_error(daemon, "snapshot", "delete", unused,
                                                                       code=2)
    assert "invalid snapshot or set id 'abc'" in cli_error(daemon, "snapshot", "delete", "abc", code=2)
    daemon.cli("snapshot", "delete", sets[1]["set_id"][:8])
    assert sorted(s["set_id"] for s in daemon.cli("snapshot", "list", "--json")) == sorted(
        [sets[0]["set_id"], sets[2]["set_id"]])
    diff = daemon.cli("diff", sets[0]["set_id"][:8], sets[2]["set_id"][:9], "--json")
    assert diff is not None
