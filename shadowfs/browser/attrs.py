"""The attributes the snapshot browser replies with, and the xattrs it already knows.

One job: build the `pyfuse3.EntryAttributes` of virtual nodes and snapshot
objects, with the kernel cache timeouts each kind may have, and keep the
extended attributes of snapshot objects read along with their attributes
(`XattrCache`), so that listxattr and getxattr need no transaction and no
open when a lookup, getattr or listing has just read them.

Invariants:
- Snapshot objects never change: their entries, attributes and negative
  entries may be cached by the kernel for SNAPSHOT_TIMEOUT.
- Virtual nodes (root, by-time, set directories and by-time symlinks) are
  cached for VIRTUAL_TIMEOUT too: they change only when sets come and go, and
  then `browser.kernelcache` takes back from the kernel what is no longer
  true.
- An object that cannot be read (damaged, design §9.3) is never cached, so
  every look at it comes back to the browser and fails with EIO.
- The xattrs kept for a node are those of the snapshot's instant: they were
  read by `SnapshotView.attr` (read-validate: a live value is used only when
  no pre-image holds the object, and a change after the snapshot is captured
  before it is applied), so they stay exact for the life of the snapshot. A
  value read before a later lapse of protection was read before the change
  the lapse let through, so a damage mark made afterwards does not make it
  wrong. Entries of a snapshot are dropped when it is deleted
  (`forget_snapshots`); the cache holds at most XATTR_CACHE_NODES nodes.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from collections.abc import Callable

import pyfuse3

from shadowfs.browser.nodes import NodeId, is_snapshot_node, split_snapshot_node
from shadowfs.diffarea.schema import AttrRecord, Seq

SNAPSHOT_TIMEOUT = 3600.0
VIRTUAL_TIMEOUT = 3600.0
BLKSIZE = 128 * 1024
VIRTUAL_DIR_MODE = stat.S_IFDIR | 0o555
LINK_MODE = stat.S_IFLNK | 0o777
XATTR_CACHE_NODES = 16384

_NO_XATTRS: dict[bytes, bytes] = {}  # shared by every node without xattrs (never modified)


def virtual_attrs(node: NodeId, mode: int, nlink: int, time_ns: int,
                  size: int = 0) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = node
    attrs.generation = 0
    attrs.entry_timeout = VIRTUAL_TIMEOUT
    attrs.attr_timeout = VIRTUAL_TIMEOUT
    attrs.st_mode = mode
    attrs.st_nlink = nlink
    attrs.st_uid = 0
    attrs.st_gid = 0
    attrs.st_rdev = 0
    attrs.st_size = size
    attrs.st_blksize = BLKSIZE
    attrs.st_blocks = 0
    attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = time_ns
    return attrs


def snapshot_attrs(node: NodeId, record: AttrRecord) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = node
    attrs.generation = 0
    attrs.entry_timeout = SNAPSHOT_TIMEOUT
    attrs.attr_timeout = SNAPSHOT_TIMEOUT
    attrs.st_mode = record.mode
    attrs.st_nlink = record.nlink
    attrs.st_uid = record.uid
    attrs.st_gid = record.gid
    attrs.st_rdev = record.rdev
    attrs.st_size = record.size
    attrs.st_blksize = BLKSIZE
    attrs.st_blocks = record.blocks
    attrs.st_atime_ns = record.atime_ns
    attrs.st_mtime_ns = record.mtime_ns
    attrs.st_ctime_ns = record.ctime_ns
    return attrs


def negative_entry() -> pyfuse3.EntryAttributes:
    """No such entry in a snapshot directory, cached: the snapshot never changes."""
    negative = pyfuse3.EntryAttributes()
    negative.st_ino = 0
    negative.entry_timeout = SNAPSHOT_TIMEOUT
    return negative


def unreadable_attrs(node: NodeId) -> pyfuse3.EntryAttributes:
    """What a listing says of an object whose attributes cannot be read (EIO: damaged in the
    snapshot, design §9.3): its name stays in the listing, so nothing silently goes missing,
    and with no caching its lookup and getattr come back to the browser and fail with EIO. The
    kernel needs a valid file type: a regular file's, mode 0, size 0."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = node
    attrs.generation = 0
    attrs.entry_timeout = 0.0
    attrs.attr_timeout = 0.0
    attrs.st_mode = stat.S_IFREG
    attrs.st_nlink = 1
    attrs.st_blksize = BLKSIZE
    return attrs


def attrs_signature(attrs: pyfuse3.EntryAttributes) -> tuple[int, ...]:
    """What of a virtual node's attributes can change while the kernel caches them."""
    return (attrs.st_ino, attrs.st_mode, attrs.st_nlink, attrs.st_size, attrs.st_mtime_ns)


class XattrCache:
    """The xattrs of recently seen snapshot objects, by node id (trio thread only), least
    recently used out."""

    def __init__(self, capacity: int = XATTR_CACHE_NODES) -> None:
        self._capacity = capacity
        self._nodes: OrderedDict[NodeId, dict[bytes, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nodes)

    def put(self, node: NodeId, xattrs: dict[bytes, bytes]) -> None:
        self._nodes[node] = xattrs or _NO_XATTRS
        self._nodes.move_to_end(node)
        while len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)

    def get(self, node: NodeId) -> dict[bytes, bytes] | None:
        xattrs = self._nodes.get(node)
        if xattrs is not None:
            self._nodes.move_to_end(node)
        return xattrs

    def forget_snapshots(self, exists: Callable[[int, Seq], bool]) -> None:
        """Drop every node of a snapshot for which `exists(volume index, seq)` is false."""
        for node in [n for n in self._nodes if is_snapshot_node(n)]:
            index, seq, _ = split_snapshot_node(node)
            if not exists(index, seq):
                del self._nodes[node]

    def clear(self) -> None:
        self._nodes.clear()


__all__ = ["BLKSIZE", "LINK_MODE", "SNAPSHOT_TIMEOUT", "VIRTUAL_DIR_MODE", "VIRTUAL_TIMEOUT",
           "XATTR_CACHE_NODES", "XattrCache", "attrs_signature", "negative_entry", "snapshot_attrs",
           "unreadable_attrs", "virtual_attrs"]
