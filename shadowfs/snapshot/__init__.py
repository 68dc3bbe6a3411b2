"""Reading a snapshot: the read rule, trees, what changed between two snapshots.

- `view`: one snapshot of one volume by inode: attributes, entries, listings, data, with read-
  validate (design §3.2)
- `tree`: a tree to back up, by path: metadata and sparse data extents
- `readers`: a snapshot for the change scanners, by path (`PathReader`) or by inode in-process
  (`ViewReader`)
- `changes`: the diff area's candidates between two snapshots, the tree at the newer one, changed
  ranges (design §6.4)
- `diff`: `shadowfs diff`: path-level changes, with who made each
- `blame`: `shadowfs blame`: the recorded changes of one path, with their authors
- `versions`: `shadowfs versions`: every distinct version of one path, then the live one
- `revertplan`: what `shadowfs revert` must change, object by object (applied by `restore.revert`)

No pyfuse3, no trio.
"""
