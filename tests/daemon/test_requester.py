"""The requester library against a real daemon: contexts and lifetimes, properties, limits, the async API.

Auto-release (backup context) sets die with their requester process, and with
the daemon that made them; persistent (client-accessible) sets survive a daemon
restart; the per-volume snapshot cap and the 64-volume set limit are enforced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shadowfs.documents import SnapshotContext
from shadowfs.vss.requester import BackupComponents, RequesterError, SyncBackupComponents
from tests.support.daemon import DaemonRun
from tests.support.writers import ROOT

pytestmark = pytest.mark.fuse

HOLDER = textwrap.dedent("""
    import json, sys, time
    from shadowfs.vss.requester import SyncBackupComponents
    bc = SyncBackupComponents(sys.argv[1])
    bc.set_context(sys.argv[2])
    set_id = bc.start_snapshot_set()
    bc.add_to_snapshot_set(sys.argv[3])
    reply = bc.do_snapshot_set()
    print(json.dumps({"set_id": set_id, "path": reply["snapshots"][0]["path"]}), flush=True)
    time.sleep(600)
""")


def hold_a_set(daemon: DaemonRun, context: str, volume: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A requester process that creates a set and then waits; returns it and {set_id, path}."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(daemon.state), context, volume], cwd=ROOT,
                            env=daemon.env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"requester exited {proc.wait()}"
    return proc, json.loads(line)


def sets(daemon: DaemonRun) -> dict[str, dict]:
    return {s["set_id"]: s for s in daemon.cli("snapshot", "list", "--json")}


def wait_gone(daemon: DaemonRun, set_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set_id not in sets(daemon):
            return
        time.sleep(0.1)
    raise AssertionError(f"set {set_id} is still there")


def test_an_auto_release_set_disappears_when_its_requester_is_killed(daemon: DaemonRun) -> None:
    volume = daemon.add_volume("a")
    daemon.wait_ready()
    (volume / "f").write_text("kept while the requester lives")
    proc, made = hold_a_set(daemon, "backup", "a")
    try:
        assert sets(daemon)[made["set_id"]]["context"] == "backup"
        assert Path(made["path"], "f").read_text() == "kept while the requester lives"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_gone(daemon, made["set_id"])
        assert not os.path.exists(made["path"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "released auto-release snapshot set" in daemon.log.read_text()


def test_a_client_accessible_set_survives_a_daemon_restart(daemon: DaemonRun) -> None:
    volume = daemon.add_volume("a")
    daemon.wait_ready()
    (volume / "f").write_text("persistent")
    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.set_context(SnapshotContext.CLIENT_ACCESSIBLE)
        set_id = bc.start_snapshot_set()
        snapshot_id = bc.add_to_snapshot_set("a")
        bc.do_snapshot_set()
        props = bc.get_snapshot_properties(snapshot_id)
        # persistent, client-accessible, no auto-release, no writers
        assert props.snapshot_attributes & 0x1D == 0x1D
    daemon.stop()
    daemon.start()
    daemon.wait_ready()
    entry = sets(daemon)[set_id]
    assert entry["context"] == "client_accessible" and entry["id"] == snapshot_id
    assert Path(entry["path"], "f").read_text() == "persistent"


def test_auto_release_sets_of_a_killed_daemon_are_deleted_at_the_next_start(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.wait_ready()
    keep = daemon.snapshot("a")["set_id"]
    proc, made = hold_a_set(daemon, "file_share_backup", "a")
    try:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    daemon.start()
    daemon.wait_ready()
    wait_gone(daemon, made["set_id"])
    assert list(sets(daemon)) == [keep]


def test_snapshot_properties_query_and_the_per_volume_cap(daemon: DaemonRun,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWFS_MAX_SNAPSHOTS_PER_VOLUME", "2")
    daemon.stop()
    daemon.start()
    a = daemon.add_volume("a")
    daemon.add_volume("b")
    daemon.wait_ready()
    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.set_context(SnapshotContext.NAS_ROLLBACK)
        set_id = bc.start_snapshot_set()
        ids = {v: bc.add_to_snapshot_set(v) for v in ("a", "b")}
        bc.do_snapshot_set()
        props = {p.original_volume_name: p for p in bc.query_snapshots()}
        assert {v: p.snapshot_id for v, p in props.items()} == ids
        assert props["a"].snapshots_count == 2 and props["a"].snapshot_set_id == set_id
        assert props["a"].original_volume_path == str(a) and props["a"].backing_path == str(a)
        assert props["a"].snapshot_attributes & 0x19 == 0x19 and props["a"].provider_id
        assert props["a"].creation_timestamp.endswith("Z") and props["a"].status == "created"
        saved = bc.save_as_xml()
        assert f'snapshotId="{ids["a"]}"' in saved and props["a"].snapshot_device_object in saved
    daemon.snapshot("a")
    error = daemon.cli("snapshot", "create", "a", check=False)
    assert "volume a already has 2 snapshots, the most allowed (2)" in error.stderr
    bad = daemon.cli("snapshot", "create", "b", "--json")  # b has one: fine
    assert bad["snapshots"][0]["volume"] == "b"


async def test_the_async_api(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.wait_ready()
    async with BackupComponents(str(daemon.state)) as bc:
        assert await bc.gather_writer_metadata() == {}
        bc.set_context(SnapshotContext.APP_ROLLBACK)
        set_id = bc.start_snapshot_set()
        await bc.add_to_snapshot_set("a")
        assert await bc.is_volume_supported("a") and not await bc.is_volume_supported("zz")
        reply = await bc.do_snapshot_set()
        assert reply["context"] == "app_rollback" and reply["writers"] == []
        assert await bc.gather_writer_status() == []
        deleted = await bc.delete_snapshots(set_id)
        assert [d["volume"] for d in deleted] == ["a"]
        with pytest.raises(RequesterError, match="unknown snapshot or snapshot set"):
            await bc.get_snapshot_properties(set_id)
