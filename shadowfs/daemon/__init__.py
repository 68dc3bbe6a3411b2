"""The shadowfs daemon: supervises the mount processes, takes snapshot sets, serves the socket.

- `children`: supervised child processes: start, ready, restart with backoff, stop
- `sets`: a snapshot set across volumes: hold all, commit and release each, undo on failure (design
  §4.1)
- `server`: the daemon: state directory, the socket, requests, volumes, listing; `run`

Writers and requesters are served by `shadowfs.service`, which runs inside the daemon.
"""
