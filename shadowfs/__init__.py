"""shadowfs: Windows VSS-style snapshot sets for Linux directory trees, on FUSE with an LMDB diff area.

Data flow::

    applications ──write──▶ live mount (livefs, one mountproc per volume)
                                 │ capture pre-images before every change (capture, committer)
                                 ▼
                          diff area (diffarea, format: one LMDB env per volume)
                                 ▲ pre-images, else live backing data (snapview)
    rsync / backups ──read──▶ snapshot browser (browserfs, one browserproc, read-only)

    shadowfs CLI ──daemon.sock──▶ daemon ──socketpairs (ipc frames)──▶ mountprocs, browserproc
                                    │
                                    └── state dir: volumes.json, daemon.lock (config)

See ARCHITECTURE.md for the module map and the process protocols, and
DESIGN.md for the capture rule everything rests on.
"""

__version__ = "0.1.0"
