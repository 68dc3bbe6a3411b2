"""The SQLite writer's pieces without a daemon: WAL stamps, the log ranges it names for a
backup, and the database check after a restore."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from shadowfs.documents import BackupComponents as BackupComponentsDocument
from shadowfs.documents import ComponentType
from shadowfs.vss import sqlite_writer
from tests.support.writers import sqlite_load


def test_stamps_and_log_ranges_without_a_daemon(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    sqlite_load.create(str(db))
    with sqlite3.connect(db, isolation_level=None) as keep:  # keeps the WAL and its index alive
        keep.execute("INSERT INTO t(tx, k) VALUES(1, 0)")
        first = sqlite_writer.make_stamp(str(db))
        keep.execute("INSERT INTO t(tx, k) VALUES(2, 0)")
        second = sqlite_writer.make_stamp(str(db))
        _, salt, frames, page_size = sqlite_writer.wal_position(str(db)) or (0, "", 0, 0)
        assert first.split(":")[:3] == second.split(":")[:3] == ["wal", first.split(":")[1], salt]
        assert int(second.split(":")[3]) == frames > int(first.split(":")[3])
        writer = sqlite_writer.SqliteWriter(str(db), instance_name="x")
        writer._stamp = second
        document = BackupComponentsDocument()
        component = document.add_component(uuid.uuid4(), uuid.uuid4(), ComponentType.DATABASE, "sqlite",
                                           "x.db")
        writer._name_new_frames(component, first)
        [partial] = component.partial_files
        start = 32 + int(first.split(":")[3]) * (24 + page_size)
        assert partial.filename == "x.db-wal" and partial.ranges.startswith(f"{start}:")
        assert sqlite_writer.check_database(str(db)) is None
    (tmp_path / "bad.db").write_bytes(b"not a database" * 100)
    assert "bad.db" in (sqlite_writer.check_database(str(tmp_path / "bad.db")) or "")
