"""The VSS service end to end: a real daemon, real FUSE volumes, real writer processes, the requester library.

Covers the event order of vss §2 and §3 for a full backup and a restore, stamps and
writer additions travelling through the BCD, a writer that hangs in Freeze, a
writer killed mid-sequence, a veto, the CLI (`writers`, `snapshot create
--writers/--no-writers/--context`) and the protocol version check.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.documents import (
    BackupComponents as BackupComponentsDocument,
)
from shadowfs.documents import (
    BackupType,
    ComponentType,
    SnapshotContext,
    WriterFailure,
    WriterState,
)
from shadowfs.ipc import frames
from shadowfs.vss.requester import RequesterError, SnapshotSetAborted, SyncBackupComponents
from tests.support.daemon import DaemonRun
from tests.support.writers import WriterProcs, writer_procs

pytestmark = pytest.mark.fuse


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)

BACKUP_ORDER = ["identify", "prepare_backup", "prepare_snapshot", "freeze", "thaw", "post_snapshot",
                "backup_complete", "backup_shutdown"]


def setup_volume(daemon: DaemonRun, name: str = "a") -> Path:
    volume = daemon.add_volume(name)
    daemon.wait_ready()
    return volume


def select_all(bc: SyncBackupComponents) -> dict[str, str]:
    """Gather metadata, add every writer's component; {writer name: instance id}."""
    metadata = bc.gather_writer_metadata()
    names = {}
    for instance_id, wmd in metadata.items():
        writer_id = str(wmd.identity.writer_id)
        bc.add_component(instance_id, writer_id, ComponentType.FILEGROUP, "eventlog", "files")
        names[wmd.identity.friendly_name] = instance_id
    return names


def snapshot_sets(daemon: DaemonRun) -> list[str]:
    return sorted({s["set_id"] for s in daemon.cli("snapshot", "list", "--json")})


def browser_sets(daemon: DaemonRun) -> list[str]:
    return sorted(n for n in os.listdir(daemon.mount_root / "snapshots") if n not in ("by-time", "by-volume"))


def test_full_backup_then_restore_follow_the_event_order_of_the_seeds(daemon: DaemonRun,
                                                                      writers: WriterProcs) -> None:
    volume = setup_volume(daemon)
    for name in ("w1", "w2"):
        writers.start_eventlog(name, volume / name)
        (volume / name / "data.log").write_text(f"{name} before")
    writers.wait_registered("w1", "w2")

    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.set_context(SnapshotContext.BACKUP)
        names = select_all(bc)
        assert sorted(names) == ["w1", "w2"]
        wmd = bc.writer_metadata[names["w1"]]
        assert [c.name for c in wmd.components] == ["files"] and wmd.excluded_files[0].filespec == "*.tmp"
        bc.set_backup_state(True, False, BackupType.FULL)
        set_id = bc.start_snapshot_set()
        snapshot_id = bc.add_to_snapshot_set(str(volume / "w1"))  # a path inside the volume names it
        bc.prepare_for_backup()
        reply = bc.do_snapshot_set()
        assert reply["set_id"] == set_id and reply["context"] == "backup"
        for name in ("w1", "w2"):
            (volume / name / "data.log").write_text(f"{name} after")
        props = bc.get_snapshot_properties(snapshot_id)
        assert props.snapshot_set_id == set_id and props.original_volume_name == "a"
        assert props.snapshot_device_object == str(daemon.mount_root / "snapshots" / set_id / "a")
        assert props.context is SnapshotContext.BACKUP and props.snapshots_count == 1
        assert props.snapshot_attributes & 0x1 == 0  # not persistent: auto-release
        assert Path(props.snapshot_device_object, "w1", "data.log").read_text() == "w1 before"
        for instance_id in names.values():
            bc.set_backup_succeeded(instance_id, "", ComponentType.FILEGROUP, "eventlog", "files", True)
        bc.backup_complete()
        statuses = {s.writer_name: s for s in bc.gather_writer_status()}
        assert {n: s.state for n, s in statuses.items()} == {"w1": WriterState.STABLE,
                                                             "w2": WriterState.STABLE}
        saved = bc.save_as_xml()
        assert set_id in snapshot_sets(daemon)
    assert set_id not in snapshot_sets(daemon)  # auto-release: gone with the session

    for name in ("w1", "w2"):
        assert writers.sequence(name) == BACKUP_ORDER, writers.sequence(name)
        assert writers.wait_event(name, "backup_complete_succeeded")["succeeded"] == {"files": True}
    events = writers.events()
    last = {e: max(r["t"] for r in events if r["event"] == e) for e in ("prepare_snapshot", "freeze")}
    first = {e: min(r["t"] for r in events if r["event"] == e) for e in ("freeze", "thaw")}
    assert last["prepare_snapshot"] <= first["freeze"] and last["freeze"] <= first["thaw"]

    document = BackupComponentsDocument.from_xml(saved)
    component = document.component(uuid.UUID(names["w1"]), "eventlog", "files")
    assert component.backup_stamp == "stamp-after-none" and component.backup_succeeded
    assert [d.filespec for d in component.differenced_files] == ["*.log"]
    assert [(p.filename, p.ranges) for p in component.partial_files] == [("big.bin", "0:10,100:5")]
    assert document.snapshot_set is not None and str(document.snapshot_set.snapshot_set_id) == set_id

    # an incremental backup hands the previous stamp back to the writer (vss §9)
    started = time.time()
    with SyncBackupComponents(str(daemon.state)) as bc:
        names = select_all(bc)
        bc.set_backup_state(True, False, BackupType.INCREMENTAL)
        bc.set_previous_backup_stamp(names["w1"], "eventlog", "files", component.backup_stamp)
        bc.prepare_for_backup()
        bc.abort_backup()
    assert writers.wait_event("w1", "previous_stamp")["stamp"] == "stamp-after-none"
    assert writers.sequence("w1", since=started) == ["identify", "prepare_backup", "abort", "backup_shutdown"]

    # restore from the saved document: Identify, PreRestore, PostRestore; additional restores, new targets
    started = time.time()
    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.load_from_xml(saved)
        bc.gather_writer_metadata()
        bc.set_selected_for_restore(names["w1"], "", ComponentType.FILEGROUP, "eventlog", "files", True)
        bc.set_additional_restores(names["w1"], "", ComponentType.FILEGROUP, "eventlog", "files", True)
        bc.add_new_target(names["w1"], "", ComponentType.FILEGROUP, "eventlog", "files",
                          str(volume / "w1"), "*", True, str(volume / "restored"))
        bc.pre_restore()
        target = bc.component(names["w1"], "eventlog", "files").directed_targets
        assert [t.destination_ranges for t in target] == ["0:10"]  # the writer's directed target came back
        bc.post_restore()
        assert BackupComponentsDocument.from_xml(bc.save_as_xml()).component(
            uuid.UUID(names["w1"]), "eventlog", "files").directed_targets
    assert writers.sequence("w1", since=started) == ["identify", "pre_restore", "post_restore",
                                                     "backup_shutdown"]
    assert writers.sequence("w2", since=started) == ["identify"]  # not selected for restore
    restore = writers.wait_event("w1", "restore_component")
    assert restore["additional"] is True and restore["new_targets"] == [str(volume / "restored")]
    assert restore["stamp"] == "stamp-after-none"


def _write_latencies(path: Path, stop: threading.Event, worst: list[float]) -> None:
    """Keep writing to the live volume; record the slowest write."""
    index = 0
    while not stop.is_set():
        started = time.monotonic()
        path.write_text(str(index))
        worst[0] = max(worst[0], time.monotonic() - started)
        index += 1
        time.sleep(0.01)


def test_a_writer_hanging_in_freeze_aborts_the_set_within_the_freeze_timeout(daemon: DaemonRun,
                                                                               writers: WriterProcs) -> None:
    volume = setup_volume(daemon)
    writers.start_eventlog("hang", volume / "hang", "--hang-at", "freeze")
    writers.start_eventlog("ok", volume / "ok")
    writers.wait_registered("hang", "ok")
    stop, worst = threading.Event(), [0.0]
    loader = threading.Thread(target=_write_latencies, args=(volume / "ok" / "live", stop, worst))
    loader.start()
    try:
        with SyncBackupComponents(str(daemon.state)) as bc:
            bc.set_context(SnapshotContext.BACKUP)
            names = select_all(bc)
            bc.set_backup_state(True, False, BackupType.FULL)
            bc.start_snapshot_set()
            bc.add_to_snapshot_set("a")
            bc.prepare_for_backup()
            started = time.monotonic()
            with pytest.raises(SnapshotSetAborted) as error:
                bc.do_snapshot_set(freeze_timeout=2.0)
            elapsed = time.monotonic() - started
            assert 2.0 <= elapsed < 4.0, elapsed
            message = str(error.value)
            assert "writer 'hang'" in message and "failed at freeze: timeout" in message
            assert "'ok'" not in message
            statuses = {s.writer_name: s for s in bc.gather_writer_status()}
            assert statuses["hang"].state is WriterState.FAILED_AT_FREEZE
            assert statuses["hang"].failure is WriterFailure.TIMEOUT
            assert statuses["ok"].state is WriterState.STABLE and statuses["ok"].failure is None
            assert snapshot_sets(daemon) == [] and browser_sets(daemon) == []
            assert names
    finally:
        stop.set()
        loader.join()
    assert worst[0] < 10.0
    assert writers.sequence("ok")[-3:] == ["freeze", "abort", "backup_shutdown"]
    writers.wait_event("hang", "abort")  # its hung Freeze was cancelled by the Abort sent behind it
    listed = {w["writer_name"]: w for w in daemon.cli("writers", "--json")}
    assert listed["hang"]["last_failure"]["event"] == "freeze"
    assert listed["hang"]["last_failure"]["failure"] == "timeout"


@pytest.mark.parametrize("die_at", ["freeze", "thaw"])
def test_a_writer_killed_mid_sequence_aborts_the_set_and_thaws_the_others(daemon: DaemonRun,
                                                                          writers: WriterProcs,
                                                                          die_at: str) -> None:
    volume = setup_volume(daemon)
    writers.start_eventlog("doomed", volume / "doomed", "--die-at", die_at)
    for name in ("ok1", "ok2"):
        writers.start_eventlog(name, volume / name)
    writers.wait_registered("doomed", "ok1", "ok2")
    with SyncBackupComponents(str(daemon.state)) as bc:
        select_all(bc)
        bc.set_backup_state(True, False, BackupType.FULL)
        bc.start_snapshot_set()
        bc.add_to_snapshot_set("a")
        bc.prepare_for_backup()
        with pytest.raises(SnapshotSetAborted) as error:
            bc.do_snapshot_set()
        assert "writer 'doomed'" in str(error.value) and f"failed at {die_at}" in str(error.value)
        statuses = {s.writer_name: s for s in bc.gather_writer_status()}
        assert statuses["doomed"].state.value == f"failed_at_{die_at}"
        assert statuses["doomed"].failure is WriterFailure.NON_RETRYABLE and not statuses["doomed"].connected
        for name in ("ok1", "ok2"):
            assert statuses[name].state is WriterState.STABLE
        assert snapshot_sets(daemon) == [] and browser_sets(daemon) == []
    for name in ("ok1", "ok2"):
        sequence = writers.sequence(name)
        assert sequence[sequence.index("freeze") + 1:] in (["abort", "backup_shutdown"],
                                                           ["thaw", "abort", "backup_shutdown"]), sequence
    assert writers.procs["doomed"].wait(timeout=10) != 0


def test_a_veto_at_prepare_snapshot_aborts_before_any_freeze(daemon: DaemonRun, writers: WriterProcs) -> None:
    volume = setup_volume(daemon)
    writers.start_eventlog("veto", volume / "veto", "--veto-at", "prepare_snapshot")
    writers.wait_registered("veto")
    error = daemon.cli("snapshot", "create", "a", check=False)
    assert error.returncode == 1
    assert "failed at prepare_snapshot: non_retryable (the writer vetoed prepare_snapshot)" in error.stderr
    assert writers.sequence("veto") == ["identify", "prepare_snapshot", "abort", "backup_shutdown"]
    assert snapshot_sets(daemon) == []
    listed = daemon.cli("writers", "--json")
    assert listed[0]["state"] == "failed_at_prepare_snapshot" and listed[0]["failure"] == "non_retryable"
    # without writers the set is made (crash-consistent)
    made = daemon.cli("snapshot", "create", "a", "--no-writers", "--json")
    assert made["context"] == "client_accessible" and made["writers"] == []
    assert writers.sequence("veto") == ["identify", "prepare_snapshot", "abort", "backup_shutdown"]


def test_cli_snapshot_create_with_writers_and_contexts(daemon: DaemonRun, writers: WriterProcs) -> None:
    volume = setup_volume(daemon)
    other = setup_volume(daemon, "b")
    writers.start_eventlog("here", volume / "here")
    writers.start_eventlog("elsewhere", other / "there")
    writers.wait_registered("here", "elsewhere")
    made = daemon.cli("snapshot", "create", "a", "--json")
    assert made["context"] == "client_accessible_writers"
    assert [w["writer_name"] for w in made["writers"]] == ["here"]  # only writers with files on volume a
    assert writers.sequence("here") == ["identify", "prepare_snapshot", "freeze", "thaw", "post_snapshot",
                                        "backup_shutdown"]
    assert writers.sequence("elsewhere") == ["identify"]
    listed = {s["set_id"]: s for s in daemon.cli("snapshot", "list", "--json")}
    assert listed[made["set_id"]]["context"] == "client_accessible_writers"
    assert listed[made["set_id"]]["attributes"] & 0x1  # persistent
    rollback = daemon.cli("snapshot", "create", "a", "b", "--context", "app_rollback", "--json")
    assert sorted(w["writer_name"] for w in rollback["writers"]) == ["elsewhere", "here"]
    for bad, message in ((["--context", "backup"], "is auto-release"),
                         (["--context", "client_accessible", "--writers"], "does not involve writers")):
        result = daemon.cli("snapshot", "create", "a", *bad, check=False)
        assert result.returncode == 2 and message in result.stderr
    table = daemon.cli("writers").stdout
    assert "here" in table and "stable" in table


def test_protocol_versions_and_bad_registrations_get_clear_errors(daemon: DaemonRun) -> None:
    def call(obj: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(daemon.state / "daemon.sock"))
            frames.send_frame(sock, {**obj, "id": 1})
            reply, _ = frames.recv_frame(sock)
        return reply

    assert call({"op": "hello", "protocol": "1.0"})["protocol"] == "1.0"
    assert call({"op": "hello", "protocol": "1.7"})["ok"] is True  # newer minor: accepted
    refused = call({"op": "hello", "protocol": "2.0"})
    assert refused["error"] == "protocol version 2.0 is not supported: this daemon speaks 1.x (1.0)"
    assert "protocol version 9.1 is not supported" in call({"op": "status", "protocol": "9.1"})["error"]
    assert "'protocol' must be a version" in call({"op": "writer_register"})["error"]
    writer = {"op": "writer_register", "protocol": "1.0", "class_id": "not-a-uuid",
              "instance_id": "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21", "writer_name": "x"}
    assert call(writer)["error"] == "request field 'class_id' must be a UUID"
    writer["class_id"] = writer["instance_id"]
    writer["freeze_timeout"] = -1
    assert "'freeze_timeout' must be a number of seconds" in call(writer)["error"]
    too_many = {"op": "snapshot_create", "volumes": [f"v{i}" for i in range(65)]}
    assert "at most 64 volumes" in call(too_many)["error"]
    assert "unknown volume 'nope'" in call({"op": "snapshot_create", "volumes": ["nope"]})["error"]


def test_requester_errors_are_clear(daemon: DaemonRun, tmp_path: Path) -> None:
    with pytest.raises(RequesterError, match="not running"):
        SyncBackupComponents(str(tmp_path / "nowhere"))
    setup_volume(daemon)
    with SyncBackupComponents(str(daemon.state)) as bc:
        with pytest.raises(RequesterError, match="start_snapshot_set first"):
            bc.add_to_snapshot_set("a")
        bc.start_snapshot_set()
        with pytest.raises(RequesterError, match="not a shadowfs volume"):
            bc.add_to_snapshot_set("/nowhere")
        bc.add_to_snapshot_set("a")
        with pytest.raises(RequesterError, match="already in the snapshot set"):
            bc.add_to_snapshot_set("a")
        with pytest.raises(RequesterError, match="no writer with instance id"):
            bc.add_component("6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21", "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21",
                             ComponentType.DATABASE, "", "db")
            bc.prepare_for_backup()


def test_a_frozen_writer_thaws_when_the_daemon_dies_and_reregisters_after_restart(
        daemon: DaemonRun, writers: WriterProcs) -> None:
    volume = setup_volume(daemon)
    writers.start_eventlog("frozen", volume / "frozen")
    writers.start_eventlog("slow", volume / "slow", "--hang-at", "freeze")
    before = writers.wait_registered("frozen", "slow")
    outcome: list[BaseException | None] = []

    def backup() -> None:
        try:
            with SyncBackupComponents(str(daemon.state)) as bc:
                bc.start_snapshot_set()
                bc.add_to_snapshot_set("a")
                bc.do_snapshot_set(freeze_timeout=60)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    thread = threading.Thread(target=backup)
    thread.start()
    writers.wait_event("frozen", "freeze")
    assert daemon.proc is not None
    daemon.proc.kill()  # the daemon dies while "frozen" is frozen and "slow" hangs in Freeze
    daemon.proc.wait()
    daemon.proc = None
    thread.join(timeout=30)
    assert isinstance(outcome[0], RequesterError)
    writers.wait_event("frozen", "abort", timeout=10)  # thawed by losing the daemon
    assert writers.sequence("frozen")[-2:] == ["freeze", "abort"]
    daemon.start()
    after = writers.wait_registered("frozen", "slow")
    assert {n: w["instance_id"] for n, w in after.items()} == {n: w["instance_id"] for n, w in before.items()}
    assert after["frozen"]["pid"] == before["frozen"]["pid"]  # the same processes, registered again
