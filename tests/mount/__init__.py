"""Mount tests: real FUSE mounts (marked `fuse`).

A live mount process (`shadowfs.live.process`) or a snapshot-browser process
(`shadowfs.browser.process`) per test, on a socketpair like the daemon uses,
changed and read through the mount. test_handoff: a mount outlives the process
serving it (tests/support/handoff_fs.py), a new one takes its connection over.
"""
