"""The snapshot browser: one read-only FUSE mount showing every snapshot set (design §5).

- `nodes`: the node-id bit layout: volume, sequence and backing inode in one number, stable for a
  snapshot's life
- `volumes`: the volumes shown, their diff areas opened when they appear, snapshot sets and their
  by-time names
- `ops`: pyfuse3 handlers over `snapshot.view`
- `process`: ``python -m shadowfs.browser.process``: mount, serve the daemon's volume list
"""
