"""The SQLite writer: one database taking part in snapshot sets (`shadowfs writer sqlite --db PATH`).

```
 daemon ──Freeze──▶ SqliteWriter: BEGIN IMMEDIATE  (the database's writers now wait)
        ──Thaw────▶               ROLLBACK         (they go on)
```

One job: make every snapshot of the database's volume hold the database at a
transaction boundary, and tell the requester what to back up and how.

Metadata (Identify): one database component named after the file (logical
path `sqlite`), its data file, and its log files (`-wal`, `-journal`) as
DATABASE_LOGFILES that count for every backup type, log backups included; the
`-shm` index is excluded (SQLite rebuilds it). Schema: copy, log, timestamped.

Invariants:
- Between a successful Freeze and Thaw/Abort the writer holds the database's
  write lock (BEGIN IMMEDIATE, taken only once the transaction in progress has
  committed), so no transaction straddles the snapshot instant and the WAL is
  neither appended to, reset nor truncated. A checkpoint may be running: it
  only writes pages the intact WAL also holds, so the copy recovers. The
  writer does not checkpoint at Freeze: copying WAL pages into the database
  file right after a snapshot would only make the diff area capture them.
- The backup stamp is the WAL position at the freeze instant:
  `wal:<checkpoint seq>:<salt>:<frames>` (or `db:<change counter>` for a
  rollback-journal database). For a log backup whose previous stamp has the same
  WAL salt, PostSnapshot names the frames added since as a partial file.
- PreRestore closes the writer's connection; PostRestore (after the last of
  several restores) opens the restored database and runs `PRAGMA
  integrity_check`; anything but "ok" fails the event with the first problem.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import struct
import sys
import threading
import time

import trio

from shadowfs.documents import (
    BackupSchema,
    BackupType,
    ComponentState,
    ComponentType,
    FileSpecBackupType,
    RestoreMethodType,
    SourceType,
    WriterFailure,
    WriterMetadata,
    WriterRestoreCondition,
    format_range_string,
)
from shadowfs.service import protocol
from shadowfs.vss.writer import EventContext, Writer, serve_until_signalled

log = logging.getLogger(__name__)

CLASS_ID = "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21"
LOGICAL_PATH = "sqlite"
WAL_HEADER = struct.Struct(">IIIIII")      # magic, version, page size, checkpoint seq, salt1, salt2, ...
WAL_HEADER_SIZE = 32                       # ... and two checksum words
WAL_FRAME_HEADER = 24
DATA_FILES = (FileSpecBackupType.FULL_BACKUP_REQUIRED | FileSpecBackupType.DIFFERENTIAL_BACKUP_REQUIRED
              | FileSpecBackupType.INCREMENTAL_BACKUP_REQUIRED | FileSpecBackupType.ALL_SNAPSHOT_REQUIRED)
LOG_FILES = FileSpecBackupType.ALL_BACKUP_REQUIRED | FileSpecBackupType.ALL_SNAPSHOT_REQUIRED


def wal_position(db_path: str) -> tuple[int, str, int, int] | None:
    """(checkpoint seq, salt, frames in the WAL, page size) from the -wal header and -shm index, or None."""
    try:
        with open(db_path + "-wal", "rb") as f:
            header = f.read(WAL_HEADER.size)
    except FileNotFoundError:
        return None
    if len(header) < WAL_HEADER.size:
        return None
    _, _, page_size, checkpoint_seq, salt1, salt2 = WAL_HEADER.unpack(header)
    frames = 0
    try:
        with open(db_path + "-shm", "rb") as f:
            index = f.read(48)
        if len(index) == 48:
            frames = int.from_bytes(index[16:20], sys.byteorder)  # WalIndexHdr.mxFrame
    except FileNotFoundError:
        pass
    return checkpoint_seq, f"{salt1:08x}{salt2:08x}", frames, page_size


def change_counter(db_path: str) -> int:
    """The database header's file change counter (bytes 24..27): bumped by every rollback-mode commit."""
    with open(db_path, "rb") as f:
        header = f.read(28)
    return int.from_bytes(header[24:28], "big") if len(header) == 28 else 0


def make_stamp(db_path: str) -> str:
    position = wal_position(db_path)
    if position is not None:
        checkpoint_seq, salt, frames, _ = position
        return f"wal:{checkpoint_seq}:{salt}:{frames}"
    return f"db:{change_counter(db_path)}"


def check_database(db_path: str) -> str | None:
    """None if `PRAGMA integrity_check` says ok, else its first complaint."""
    try:
        with sqlite3.connect(db_path, timeout=30) as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return f"cannot check {db_path}: {exc}"
    if rows == [("ok",)]:
        return None
    return f"{db_path} fails integrity_check: {rows[0][0] if rows else 'no answer'}"


class SqliteWriter(Writer):
    """A writer for one SQLite database file."""

    class_id = CLASS_ID
    writer_name = "SQLite"
    data_source = SourceType.TRANSACTION_DB

    def __init__(self, db_path: str, *, freeze_timeout: float = protocol.DEFAULT_FREEZE_TIMEOUT,
                 instance_name: str | None = None) -> None:
        self.db_path = os.path.realpath(db_path)
        super().__init__(instance_name=instance_name or self.db_path, freeze_timeout=freeze_timeout)
        self.directory, self.filename = os.path.split(self.db_path)
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._stamp = ""

    # ---- the database, from worker threads ------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.db_path, timeout=0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 0")
        return self._conn

    def _quiesce(self, within: float) -> str:
        """Take the write lock (BEGIN IMMEDIATE) within `within` seconds; return the stamp.

        SQLite's busy handler sleeps up to 100 ms between tries, and a busy application
        takes the lock again microseconds after each commit, so the handler would starve;
        instead this tries again at once (yielding the CPU) until the deadline.
        """
        deadline = time.monotonic() + within
        with self._conn_lock:
            conn = self._db()
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0)
            return make_stamp(self.db_path)

    def _resume(self) -> None:
        with self._conn_lock:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- hooks --------------------------------------------------------------------------------------

    async def on_identify(self, metadata: WriterMetadata) -> None:
        metadata.set_backup_schema(BackupSchema.COPY | BackupSchema.LOG | BackupSchema.TIMESTAMPED)
        metadata.add_component(ComponentType.DATABASE, LOGICAL_PATH, self.filename,
                               caption=f"SQLite database {self.db_path}", selectable_for_backup=True,
                               selectable_for_restore=True, notify_on_backup_complete=True)
        metadata.add_database_files(LOGICAL_PATH, self.filename, self.directory, self.filename,
                                    backup_type_mask=DATA_FILES)
        for suffix in ("-wal", "-journal"):
            metadata.add_database_log_files(LOGICAL_PATH, self.filename, self.directory,
                                            self.filename + suffix, backup_type_mask=LOG_FILES)
        metadata.add_exclude_files(self.directory, self.filename + "-shm")
        metadata.set_restore_method(RestoreMethodType.RESTORE_IF_CAN_REPLACE,
                                    writer_restore=WriterRestoreCondition.ALWAYS)

    async def on_freeze(self, ctx: EventContext) -> bool:
        try:
            self._stamp = await trio.to_thread.run_sync(self._quiesce, max(0.1, ctx.timeout * 0.8))
        except sqlite3.Error as exc:
            ctx.set_writer_failure(WriterFailure.RETRYABLE, f"cannot quiesce {self.db_path}: {exc}")
            await trio.to_thread.run_sync(self._resume)
            return False
        log.info("%s frozen at %s", self.db_path, self._stamp)
        return True

    async def on_thaw(self, ctx: EventContext) -> bool:
        await trio.to_thread.run_sync(self._resume)
        return True

    async def on_abort(self, ctx: EventContext) -> bool:
        await trio.to_thread.run_sync(self._resume)
        return True

    async def on_post_snapshot(self, ctx: EventContext) -> bool:
        for component in ctx.selected():
            previous = component.previous_backup_stamp
            component.set_backup_stamp(self._stamp)
            if ctx.backup_type is BackupType.LOG and previous:
                self._name_new_frames(component, previous)
        return True

    def _name_new_frames(self, component: ComponentState, previous: str) -> None:
        """Log backup: the WAL frames added since the previous stamp, as a partial file."""
        old, new = previous.split(":"), self._stamp.split(":")
        position = wal_position(self.db_path)
        if len(old) != 4 or len(new) != 4 or old[:3] != new[:3] or position is None:
            return  # another WAL generation: the whole log file is backed up
        first, last, page_size = int(old[3]), int(new[3]), position[3]
        if last <= first:
            return
        frame = WAL_FRAME_HEADER + page_size
        ranges = format_range_string([(WAL_HEADER_SIZE + first * frame, (last - first) * frame)])
        component.add_partial_file(self.directory, self.filename + "-wal", ranges)

    async def on_pre_restore(self, ctx: EventContext) -> bool:
        await trio.to_thread.run_sync(self._close)
        return True

    async def on_post_restore(self, ctx: EventContext) -> bool:
        components = ctx.selected()
        if any(c.additional_restores for c in components):
            return True  # more restores follow: recover after the last one
        problem = await trio.to_thread.run_sync(check_database, self.db_path)
        if problem is not None:
            for component in components:
                component.set_post_restore_failure_msg(problem)
            ctx.set_writer_failure(WriterFailure.NON_RETRYABLE, problem)
            return False
        return True


def main(argv: list[str] | None = None, state_dir: str | None = None) -> int:
    """`shadowfs writer sqlite`: run until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="shadowfs writer sqlite")
    parser.add_argument("--db", required=True)
    parser.add_argument("--timeout", type=float, default=protocol.DEFAULT_FREEZE_TIMEOUT)
    parser.add_argument("--instance-name")
    args = parser.parse_args(argv)
    return run(args.db, state_dir, args.timeout, args.instance_name)


def run(db: str, state_dir: str | None, timeout: float, instance_name: str | None = None) -> int:
    if not os.path.isfile(db):
        raise FileNotFoundError(f"no database file {db}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    writer = SqliteWriter(db, freeze_timeout=timeout, instance_name=instance_name)
    trio.run(serve_until_signalled, writer, state_dir)
    return 0


