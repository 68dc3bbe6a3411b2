"""A snapshot never changes (design §9): protection outlives the daemon, a dead mount process is
replaced without unmounting, and whatever bypassed capture reads EIO in earlier snapshots.

Real daemons, real mount processes, real writer processes, driven through the CLI:
- an application writes continuously while the daemon gets SIGTERM, SIGKILL and a restart: the
  mount processes go on and are adopted, every snapshot equals its manifest, nothing is damaged;
- a mount process killed under heavy overwrites is taken over: `stat(volume root).st_dev` never
  changes and never fails, every snapshot equals its manifest;
- a mount taken away (`umount -l`), a descriptor opened before `volume add --force`, and a change
  made while the daemon and every mount were down (a reboot): the changed file reads EIO in earlier
  snapshots, the others exactly, `damaged_objects` counts it, protection comes back by itself;
- READY=1 on $NOTIFY_SOCKET only once snapshot paths can be read; "starting" is not "not running".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowfs.linux import mounts
from shadowfs.manifest import Manifest, manifest
from tests.e2e.test_e2e_snapshots import _check_sets, _overwriter, _set_path
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse

WAIT = 60.0


def _volume_status(daemon: DaemonRun, name: str) -> dict[str, Any]:
    (volume,) = [v for v in daemon.cli("status", "--json")["volumes"] if v["name"] == name]
    return volume


def _mount_pid(daemon: DaemonRun, name: str) -> int:
    pid = _running_pid(daemon, name)
    assert pid is not None, _volume_status(daemon, name)
    return pid


def _running_pid(daemon: DaemonRun, name: str) -> int | None:
    """The pid of the volume's mount process while it serves, else None."""
    process = _volume_status(daemon, name)["process"] or {}
    return int(process["pid"]) if process.get("pid") and process.get("state") == "running" else None


def _wait_for(what: str, check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _snapshot_entry(daemon: DaemonRun, set_id: str, volume: str) -> dict[str, Any]:
    (entry,) = [s for s in daemon.cli("snapshot", "list", "--json")
                if s["set_id"] == set_id and s["volume"] == volume]
    return entry


def _read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


class DevSampler:
    """stat() of a path in a loop from another thread: every st_dev seen, every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.devs: set[int] = set()
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.devs.add(os.stat(self.path).st_dev)
            except OSError as exc:
                self.errors.append(f"{exc}")
            self.count += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)


@contextlib.contextmanager
def _app_writer(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An application that rewrites `counter` and appends to `log` through the mount, forever."""
    code = f"""
import os, time
i = 0
log = open({str(root / 'log')!r}, 'ab', buffering=0)
while True:
    i += 1
    with open({str(root / 'counter')!r}, 'r+b') as f:
        f.write(str(i).encode().ljust(16))
    log.write(b'%d\\n' % i)
    time.sleep(0.001)
"""
    (root / "counter").write_bytes(b"0".ljust(16))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _paused_snapshot(daemon: DaemonRun, writer: subprocess.Popen[bytes], name: str, root: Path,
                     manifests: dict[str, dict[str, Manifest]]) -> str:
    """The writer stopped between the manifest and the snapshot: that is the instant."""
    writer.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.05)
        expected = manifest(str(root))
        created = daemon.snapshot(name)
    finally:
        writer.send_signal(signal.SIGCONT)
    manifests[created["set_id"]] = {name: expected}
    return str(created["set_id"])


def test_protection_outlives_daemon_sigterm_sigkill_restart(daemon: DaemonRun) -> None:
    root = daemon.add_volume("app")
    daemon.wait_ready()
    manifests: dict[str, dict[str, Manifest]] = {}
    sampler = DevSampler(root)
    try:
        with _app_writer(root) as writer:
            time.sleep(0.3)
            _paused_snapshot(daemon, writer, "app", root, manifests)
            pid = _mount_pid(daemon, "app")
            for how in ("sigterm", "sigkill", "restart"):
                assert daemon.proc is not None
                if how == "sigterm":
                    daemon.stop()  # SIGTERM: the daemon goes, volumes stay protected
                elif how == "sigkill":
                    daemon.proc.send_signal(signal.SIGKILL)
                    daemon.proc.wait()
                    daemon.proc = None
                else:
                    daemon.shutdown(unprotect=False)  # `shadowfs stop`
                time.sleep(1.0)  # the application goes on writing meanwhile
                assert mounts.top_mount(str(root)) is not None
                assert daemon.mount_processes() == [pid], "the mount process did not outlive the daemon"
                daemon.start()
                assert _mount_pid(daemon, "app") == pid, "the running mount process was not adopted"
                _paused_snapshot(daemon, writer, "app", root, manifests)
    finally:
        sampler.stop()
    assert not sampler.errors, sampler.errors[:5]
    assert len(sampler.devs) == 1, "the mount went away at some point"
    _check_sets(daemon, manifests)
    for set_id in manifests:
        assert _snapshot_entry(daemon, set_id, "app")["damaged_objects"] == 0


def test_mount_process_kill_9_is_taken_over_without_unmounting(daemon: DaemonRun) -> None:
    root = daemon.add_volume("crash")
    daemon.wait_ready()
    for i in range(4):
        (root / f"f{i}").write_bytes(os.urandom(1_000_000))
    manifests: dict[str, dict[str, Manifest]] = {}
    for _ in range(2):
        expected = manifest(str(root))
        created = daemon.snapshot("crash")
        manifests[created["set_id"]] = {"crash": expected}
        for i in range(4):
            with open(root / f"f{i}", "r+b") as f:
                f.write(os.urandom(100_000))
    pid = _mount_pid(daemon, "crash")
    sampler = DevSampler(root)
    writers = [_overwriter(str(root / f"f{i}"), 65536, 15) for i in range(4)]
    # new names in the root: the kernel cannot answer a look at the root from its cache, so anything
    # (the daemon too) that looks at the mount while no process serves it waits for the successor
    writers.append(subprocess.Popen([sys.executable, "-c", f"""
import itertools
for i in itertools.count():
    open({str(root)!r} + f'/new{{i}}', 'wb').close()
"""]))
    try:
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        _wait_for("a new mount process", lambda: _running_pid(daemon, "crash") not in (None, pid))
        time.sleep(1.0)  # the overwriters go on through the new process
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
        sampler.stop()
    assert sampler.count > 0
    assert not sampler.errors, sampler.errors[:5]
    assert len(sampler.devs) == 1, f"st_dev changed during the take-over: {sampler.devs}"
    daemon.wait_ready()
    with open(daemon.log, errors="replace") as log:
        assert "took over the mount without unmounting" in log.read()
    _check_sets(daemon, manifests)
    for set_id in manifests:
        assert _snapshot_entry(daemon, set_id, "crash")["damaged_objects"] == 0


def _two_files(root: Path) -> None:
    (root / "changed").write_bytes(b"before " * 1000)
    (root / "untouched").write_bytes(b"stays " * 1000)
    (root / "sub").mkdir()
    (root / "sub" / "deep").write_bytes(b"deep")


def _overwrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


def _assert_damaged_only_changed(daemon: DaemonRun, set_id: str, volume: str, untouched_mtime: int) -> None:
    snap = Path(_set_path(daemon, set_id, volume))
    _wait_for("the change to be marked", lambda: _read_errno(snap / "changed") == errno.EIO, timeout=30)
    assert (snap / "untouched").read_bytes() == b"stays " * 1000
    assert (snap / "sub" / "deep").read_bytes() == b"deep"
    assert os.stat(snap / "untouched").st_mtime_ns == untouched_mtime
    entry = _snapshot_entry(daemon, set_id, volume)
    assert entry["damaged_objects"] >= 1
    damage = daemon.cli("snapshot", "damage", entry["id"], "--json")
    assert "changed" in [item["path"] for item in damage["damaged"]], damage


def _volume_with_a_snapshot(daemon: DaemonRun, name: str) -> tuple[Path, int, str]:
    """A protected volume with `_two_files` and one snapshot: (root, mtime of "untouched", set id)."""
    root = daemon.add_volume(name)
    daemon.wait_ready()
    _two_files(root)
    untouched_mtime = os.stat(root / "untouched").st_mtime_ns
    return root, untouched_mtime, str(daemon.snapshot(name)["set_id"])


def test_write_while_mount_taken_away_reads_eio_and_protection_returns(daemon: DaemonRun) -> None:
    root, untouched_mtime, set_id = _volume_with_a_snapshot(daemon, "lapse")
    pid = _mount_pid(daemon, "lapse")
    subprocess.run(["umount", "-l", str(root)], check=True)
    _overwrite_in_place(root / "changed", b"WRITTEN WHILE UNPROTECTED")
    _wait_for("the volume protected again", lambda: _running_pid(daemon, "lapse") not in (None, pid)
              and (mounts.top_mount(str(root)) or ("",))[0] == mounts.SHADOWFS_FUSE_TYPE)
    daemon.wait_ready()
    _assert_damaged_only_changed(daemon, set_id, "lapse", untouched_mtime)
    # protected again: a change through the mount is captured as before
    _overwrite_in_place(root / "untouched", b"after")
    snap = Path(_set_path(daemon, set_id, "lapse"))
    assert (snap / "untouched").read_bytes() == b"stays " * 1000


def test_descriptor_opened_before_volume_add_force_is_watched(daemon: DaemonRun) -> None:
    backing = daemon.base / "vol-held"
    backing.mkdir()
    _two_files(backing)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import os, sys
fd = os.open({str(backing / 'changed')!r}, os.O_WRONLY)
sys.stdout.write('open\\n'); sys.stdout.flush()
sys.stdin.readline()
os.pwrite(fd, b'WRITTEN THROUGH AN OLD DESCRIPTOR', 0)
sys.stdout.write('written\\n'); sys.stdout.flush()
sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == b"open\n"
        refused = daemon.cli("volume", "add", "held", str(backing), check=False)
        assert refused.returncode == 2 and str(holder.pid) in refused.stderr
        daemon.cli("volume", "add", "held", str(backing), "--force")
        daemon.wait_ready()
        untouched_mtime = os.stat(backing / "untouched").st_mtime_ns
        set_id = daemon.snapshot("held")["set_id"]
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == b"written\n"
        _assert_damaged_only_changed(daemon, set_id, "held", untouched_mtime)
    finally:
        holder.kill()
        holder.wait()


def test_change_while_daemon_and_mounts_down_is_found_at_start(daemon: DaemonRun) -> None:
    root, untouched_mtime, set_id = _volume_with_a_snapshot(daemon, "boot")
    time.sleep(1.5)  # a heartbeat after the last change through the mount
    # a power cut: the daemon and every mount process die at once; the reboot clears the mounts
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.proc = None
    for pid in daemon.mount_processes():
        os.kill(pid, signal.SIGKILL)
    _wait_for("the mount processes to die", lambda: not daemon.mount_processes())
    for path in (root, daemon.mount_root / "snapshots"):
        if mounts.is_fuse_mount(str(path)):
            subprocess.run(["umount", "-l", str(path)], check=True)
    _overwrite_in_place(root / "changed", b"WRITTEN WHILE DAEMON DOWN")
    daemon.start()
    _assert_damaged_only_changed(daemon, set_id, "boot", untouched_mtime)


def test_ready_only_when_snapshots_can_be_read(daemon: DaemonRun, tmp_path: Path) -> None:
    root = daemon.add_volume("ready")
    daemon.wait_ready()
    (root / "file").write_bytes(b"exact")
    set_id = daemon.snapshot("ready")["set_id"]
    daemon.shutdown(unprotect=True)
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(WAIT)
    try:
        with open(daemon.log, "ab") as log:
            daemon.proc = subprocess.Popen(
                [sys.executable, "-m", "shadowfs", "daemon"],
                env={**daemon.env, "NOTIFY_SOCKET": notify_path},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        message = listener.recv(4096).decode()
        assert "READY=1" in message.split("\n")
        # at the moment READY=1 arrives, the snapshot reads exactly
        assert Path(_set_path(daemon, set_id, "ready"), "file").read_bytes() == b"exact"
        assert daemon.cli("status", "--json")["ready"] is True
    finally:
        listener.close()


def test_starting_and_not_running_are_told_apart(tmp_path: Path) -> None:
    run = DaemonRun(tmp_path)
    stopped = run.cli("status", check=False)
    assert stopped.returncode == 3 and "not running" in stopped.stderr
    run.state.mkdir(parents=True)
    # a daemon that holds its state directory's lock but does not listen yet is starting
    fd = os.open(run.state / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        starting = run.cli("status", check=False)
        assert starting.returncode == 4 and "starting" in starting.stderr, starting.stderr
    finally:
        os.close(fd)
