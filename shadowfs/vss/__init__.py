"""What applications import: the writer and requester libraries, and the SQLite writer.

- `writer`: a VSS writer: one async hook per event, a reconnecting registration loop
- `requester`: a VSS requester: `BackupComponents` (trio) and `SyncBackupComponents` (blocking)
- `sqlite_writer`: `shadowfs writer sqlite`: quiesces one SQLite database at Freeze

The rules they follow are docs/vss.md.
"""
