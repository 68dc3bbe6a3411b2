"""What applications import: the writer and requester libraries, and the SQLite writer.

- `writer`: a VSS writer: one async hook per event, a reconnecting registration loop
- `requester`: a VSS requester: `BackupComponents` (trio) and `SyncBackupComponents` (blocking)
- `session`: what both requester APIs share: the documents, the document-only calls, every daemon
  call once (as a coroutine the blocking API runs to completion)
- `sqlite_writer`: `shadowfs writer sqlite`: quiesces one SQLite database at Freeze

The rules they follow are docs/vss.md.
"""
