"""shadowfs: Windows VSS-style snapshot sets for Linux directory trees, on FUSE with an LMDB diff area.

Data flow, and the subpackage of each box::

    applications ──write──▶ live mount (live: one process per volume, pyfuse3 + trio)
                                 │ before every change: plan, capture, wait (capture)
                                 ▼
                          diff area (diffarea: one LMDB environment + blocks.dat per volume)
                                 ▲ a pre-image if the object changed since, else live data (snapshot)
    rsync / backups ──read──▶ snapshot browser (browser: one read-only mount for every set)

    shadowfs CLI (cli) ──daemon.sock (ipc)──▶ daemon (daemon; the VSS service: service)
        requesters and writers (vss) ◀──────▶   supervises the mounts, takes snapshot sets
    backup jobs (backup) ──▶ backup media (media: images of documents, records, data) ──▶ restore

The layers, lowest first; a module imports only its own layer and the ones below
(tests/test_layout.py checks it):

    errors, manifest          what everything may use
    linux                     system calls, confined paths, mounts, the descriptor cache
    diffarea                  the on-disk format and the LMDB environment of a volume
    capture, snapshot         writing pre-images; reading snapshots (no pyfuse3, no trio)
    statedir, ipc, documents, fuse_adapter
    live, browser, media      the two FUSE filesystems; backup media
    service                   the VSS service inside the daemon
    daemon, vss               the daemon; the writer and requester libraries
    backup, restore           jobs
    cli                       one module per command

docs/design.md is the design (the capture rule everything rests on is its §3),
docs/vss.md the VSS rules the writer and requester sides follow, and
ARCHITECTURE.md says how the code realises them.
"""

__version__ = "0.1.0"
