"""The VSS service inside the daemon: writer registry, requester sessions, event broker.

```
 writer process ──writer_register──▶ ┐                       ┌─ Registry (writers, state, failure)
 (shadowfs.writer)  ◀──writer_event── │  daemon.sock          ├─ Broker (event sequences, claims)
 requester ───── gather_writer_metadata, prepare_for_backup, ──▶ Service ──▶ VolumeOps.take_set
 (shadowfs.requester)  snapshot_create, backup_complete, ... ─┘                (daemon: hold/commit/release)
                                                                └─ SetStore (<state>/sets.json)
```

One job: everything about writers and requesters that the daemon does, so
`daemon.py` only hands each connection and each request to `Service`.
Modules: `core` (`Service`, what the daemon talks to), `protocol` (wire
format, limits, checks), `registry` (writers and event delivery), `broker`
(sequences and sessions), `setstore` (contexts that survive restarts),
`connection` (per-connection limits). This package module imports none of
them: the writer and requester libraries import `protocol` alone, without
trio.

Invariants:
- A connection is either a writer (after `writer_register`) or a requester
  (its session starts with its first requester call); never both.
- When a connection ends, its writer is unregistered (any event it was
  handling fails) or its session ends: BackupShutdown to its writers, and its
  auto-release snapshot sets deleted.
- At start, sets a previous daemon left auto-release or half made are deleted
  once their volumes are mounted.
"""
