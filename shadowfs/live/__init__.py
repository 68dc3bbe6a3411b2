"""The live mount of one volume: one process, pyfuse3 on trio, every change captured first.

- `ops`: pyfuse3 handlers only: resolve the inode, ask the capture planner, wait, apply one call
- `gate`: the hold gate every change passes; a snapshot closes it (design §4.2)
- `commit`: waiting from trio for the committer thread
- `control`: the daemon's requests: hold, commit, release, delete, limits (no pyfuse3)
- `process`: ``python -m shadowfs.live.process``: open the backing directory, mount, serve
"""
