"""The SQLite writer (`shadowfs writer sqlite`) as a real process on a real shadowfs volume.

Under a continuous insert load in another process, 20 snapshot sets are taken
through the requester library; the database copied out of each set opens,
passes `PRAGMA integrity_check` and holds exactly the transactions committed
before the instant (a prefix: none torn, none missing). Restore: PostRestore
checks the restored database and reports a corrupt one. The writer's WAL stamps and
log ranges without a daemon: tests/unit/test_sqlite_stamps.py.
"""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.documents import (
    BackupSchema,
    BackupType,
    ComponentType,
    FileSpecBackupType,
    SnapshotContext,
    WriterFailure,
    WriterState,
)
from shadowfs.vss.requester import SyncBackupComponents
from tests.support.daemon import DaemonRun
from tests.support.writers import WriterProcs, sqlite_load, writer_procs

pytestmark = pytest.mark.fuse


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)


def start(daemon: DaemonRun, writers: WriterProcs) -> Path:
    volume = daemon.add_volume("db")
    daemon.wait_ready()
    db = volume / "app.db"
    sqlite_load.create(str(db))
    writers.start_sqlite("sqlite", db, "--timeout", "20")
    writers.wait_registered("SQLite")
    return db


def select_database(bc: SyncBackupComponents, db: Path) -> str:
    """Gather metadata, select the database component; return the writer's instance id."""
    metadata = bc.gather_writer_metadata()
    [(instance_id, wmd)] = metadata.items()
    bc.add_component(instance_id, str(wmd.identity.writer_id), ComponentType.DATABASE, "sqlite", db.name)
    return instance_id


def copy_out(snapshot_path: str, db: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for suffix in ("", "-wal"):
        source = Path(snapshot_path, db.name + suffix)
        if source.exists():
            shutil.copyfile(source, target / (db.name + suffix))
    return target / db.name


def test_twenty_sets_under_a_continuous_insert_load_hold_committed_prefixes(
        daemon: DaemonRun, writers: WriterProcs, tmp_path: Path) -> None:
    db = start(daemon, writers)
    spawn = multiprocessing.get_context("spawn")
    attempted, committed = spawn.Value("q", 0, lock=False), spawn.Value("q", 0, lock=False)
    stop = spawn.Event()
    loader = spawn.Process(target=sqlite_load.run, args=(str(db), attempted, committed, stop))
    loader.start()
    started = time.monotonic()
    try:
        while committed.value < 200:
            time.sleep(0.01)
        with SyncBackupComponents(str(daemon.state)) as bc:
            bc.set_context(SnapshotContext.APP_ROLLBACK)
            instance_id = select_database(bc, db)
            wmd = bc.writer_metadata[instance_id]
            [component] = wmd.components
            assert [s.filespec for s in component.database_files] == ["app.db"]
            assert [s.filespec for s in component.log_files] == ["app.db-wal", "app.db-journal"]
            log_required = FileSpecBackupType.LOG_BACKUP_REQUIRED
            assert all(s.backup_type_mask & log_required for s in component.log_files)
            assert not component.database_files[0].backup_type_mask & FileSpecBackupType.LOG_BACKUP_REQUIRED
            assert wmd.backup_schema & BackupSchema.LOG and wmd.excluded_files[0].filespec == "app.db-shm"
            bc.set_backup_state(True, False, BackupType.FULL)
            bc.prepare_for_backup()
            prefixes, stamps = [], []
            for index in range(20):
                bc.start_snapshot_set()
                bc.add_to_snapshot_set("db")
                before = committed.value
                reply = bc.do_snapshot_set()
                after = attempted.value
                stamps.append(bc.component(instance_id, "sqlite", db.name).backup_stamp)
                copy = copy_out(reply["snapshots"][0]["path"], db, tmp_path / f"set{index}")
                held = sqlite_load.committed_prefix(str(copy))
                assert before <= held <= after, (index, before, held, after)
                prefixes.append(held)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        loader.join(timeout=60)
    assert loader.exitcode == 0
    assert prefixes == sorted(prefixes) and prefixes[-1] > prefixes[0]
    assert all(s.startswith("wal:") for s in stamps) and len(set(stamps)) == len(stamps)
    rate = committed.value / elapsed / 1000
    print(f"insert load: {committed.value} transactions, {rate:.1f} per ms; sets held {prefixes}")
    assert rate > 0.5, f"the load ran at only {rate:.2f} transactions per ms"
    assert len(daemon.cli("snapshot", "list", "--json")) == 20
    status = {w["writer_name"]: w for w in daemon.cli("writers", "--json")}
    assert status["SQLite"]["last_failure"] is None


def test_post_restore_checks_the_restored_database(daemon: DaemonRun, writers: WriterProcs,
                                                   tmp_path: Path) -> None:
    db = start(daemon, writers)
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.executemany("INSERT INTO t(tx, k) VALUES(?, 0)", [(n,) for n in range(1, 500)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the rows are in the database file itself
    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.set_context(SnapshotContext.BACKUP)
        instance_id = select_database(bc, db)
        bc.set_backup_state(True, False, BackupType.FULL)
        bc.prepare_for_backup()
        bc.start_snapshot_set()
        bc.add_to_snapshot_set("db")
        reply = bc.do_snapshot_set()
        backup = copy_out(reply["snapshots"][0]["path"], db, tmp_path / "backup")
        bc.set_backup_succeeded(instance_id, "", ComponentType.DATABASE, "sqlite", db.name, True)
        bc.backup_complete()
        saved = bc.save_as_xml()
    stamp = bc.component(instance_id, "sqlite", db.name).backup_stamp
    assert stamp.startswith(("wal:", "db:"))  # no -wal file once the last connection closed it

    def restore(damage: bool, additional: bool = False) -> SyncBackupComponents:
        bc = SyncBackupComponents(str(daemon.state))
        bc.load_from_xml(saved)
        bc.gather_writer_metadata()
        bc.set_selected_for_restore(instance_id, "", ComponentType.DATABASE, "sqlite", db.name, True)
        bc.set_additional_restores(instance_id, "", ComponentType.DATABASE, "sqlite", db.name, additional)
        bc.pre_restore()
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
            if Path(str(backup) + suffix).exists():
                shutil.copyfile(str(backup) + suffix, str(db) + suffix)
        data = bytearray(backup.read_bytes())
        assert len(data) > 8192
        if damage:
            page = struct.unpack(">H", data[16:18])[0]
            data[page: 2 * page] = b"\xa5" * page  # the table's root page
        db.write_bytes(bytes(data))
        bc.post_restore()
        return bc

    with restore(damage=False) as bc:
        [status] = bc.gather_writer_status()
        assert status.state is WriterState.STABLE
    with restore(damage=True, additional=True) as bc:  # more restores follow: no recovery yet
        assert bc.gather_writer_status()[0].state is WriterState.STABLE
    with restore(damage=True) as bc:
        [status] = bc.gather_writer_status()
        assert status.state is WriterState.FAILED_AT_POST_RESTORE
        assert status.failure is WriterFailure.NON_RETRYABLE
        message = bc.component(instance_id, "sqlite", db.name).post_restore_failure_msg
        assert "app.db" in message and ("integrity_check" in message or "malformed" in message)
        assert status.last_failure is not None and status.last_failure["message"] == message
