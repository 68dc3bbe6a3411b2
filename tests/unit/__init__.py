"""Unit tests: pure code, no mount, no daemon, no LMDB environment.

Documents and range strings, file sets, media state indexes, state-directory
rules, IPC frames and channels over socketpairs, the error hierarchy and its exit
codes, the descriptor cache, progress output, who holds a tree (/proc, with
real child processes), fanotify event buffers built by hand, and the package
layout read from the source. Fast, and run first: `tools/test tests/unit`.
"""
