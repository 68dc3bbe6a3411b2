"""Helpers shared by more than one test layer (no tests here).

- `daemon`: `DaemonRun` and the `daemon` fixture (a real daemon on a private state directory)
- `writers`: writer processes for the service tests and their event logs
- `coresim`: the capture-first driver of a plain backing directory, and manifests of snapshots
- `browser_fixtures`: browser processes, workspaces and the tree-compare oracle
- `treegen`: generated trees for backup and restore tests
- `workload`: a seeded random file-operation workload on a live mount
- `handoff_fs`: a tiny pyfuse3 file system whose processes take over one mount (a script, run by tests/mount)
"""
