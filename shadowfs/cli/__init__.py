"""The `shadowfs` command line: one module per command, as borg's archiver does.

- `main`: the parser of every command, the dispatch, and the one way a command fails
  (one line on stderr, `errors.exit_code_of`, with --json also a JSON error on stdout)
- `common`: the options every command takes; `output`: JSON, tables, sizes; `progress`: progress on stderr
- `daemon_cmd`, `volume_cmd`, `snapshot_cmd`, `writer_cmd`, `status_cmd`: talking to the daemon
- `backup_cmd`, `restore_cmd`, `media_cmd`, `diff_cmd`: backup jobs, media, snapshot differences
- `blame_cmd`: who changed a path, and when; `who`: an author with user and group names

Engines are imported inside the handlers that use them, so `shadowfs --help` and the
daemon requests start quickly and never import trio or pyfuse3.
"""
