"""Frames between shadowfs processes: the daemon, its children, the CLI, writers and requesters.

- `frames`: the wire format (a 4-byte big-endian length, UTF-8 JSON, descriptors by SCM_RIGHTS)
  and its blocking send/receive; no trio
- `channel`: the trio `Channel`: requests, replies and events over one socket
- `client`: the one blocking client of the daemon socket (the CLI, the blocking requester, jobs)
- `messages`: every request, reply and event of every channel as a `TypedDict` (no I/O, no trio)

A request carries an "id"; its reply the same id and `"ok": true` plus fields, or
`"ok": false, "error", "kind"` (`shadowfs.errors`). A frame without an id is an event.
"""
