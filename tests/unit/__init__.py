"""Unit tests: pure code, no mount, no daemon, no LMDB environment.

Documents and range strings, file sets, media state indexes, state-directory
rules, IPC frames and channels over socketpairs, progress output. Fast; run them
first: `tools/test tests/unit`.
"""
