"""Linux underneath everything: system calls Python lacks, confined paths, mounts, descriptors.

The lowest layer; it knows nothing of snapshots. Everything above reaches the
backing filesystem through it.

- `syscalls`: file handles (`open_by_ino`), `renameat2`, `linkat` of a descriptor, `syncfs`, xattrs
  on descriptors, sparse-file regions
- `confined`: a tree under one root descriptor: every component opened with O_NOFOLLOW, `*at` calls,
  no mount point entered
- `atomicfile`: replace a file atomically and durably
- `mounts`: FUSE mounts by path (/proc/self/mounts), unmounting only what shadowfs made; no pyfuse3
- `fdcache`: the one descriptor cache: least recently used out, `borrow` pins, `dispose` on eviction
- `busy`: which processes hold a tree (open files, working and root directories, mappings; /proc)
- `fanotify`: a fanotify watch of a backing filesystem: changes under the backing directory, by inode,
  from any process but the ones ignored
- `ctimescan`: every object under a directory whose ctime is at or after an instant, by a descriptor walk
"""
