"""Whole snapshot directories read at once, so that lookups in them need no I/O.

One job: a path walk with cold dentries (``stat`` of many paths by absolute
path, ``find -newer``, a backup tool checking a list of files) makes the kernel
look up names one by one. Once a second name of one snapshot directory is
looked up, `DirCache` says so (`wants`); the browser then reads the whole
directory with every entry's attributes and xattrs in one batch
(`SnapshotView.listdir_attrs`: one listing, one open per entry, one
transaction) and answers the following lookups there from memory.

Invariants:
- A cached directory is complete and of one snapshot, which never changes: a
  name it lacks does not exist in the snapshot (a negative entry), and what it
  holds stays true for the life of the snapshot. Entries of a deleted snapshot
  are dropped when the browser learns of the deletion (`forget_snapshots`),
  as the xattrs are (`attrs.XattrCache`).
- Bounded: directories of more than MAX_DIR_ENTRIES entries are never cached,
  and at most MAX_ENTRIES entries in all are kept (least recently used
  directories out); the miss counts are at most MAX_MISSES directories.
- Trio thread only (the batch itself runs wherever `_offload` puts it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from shadowfs.browser.nodes import NodeId, split_snapshot_node
from shadowfs.diffarea.schema import AttrRecord, Seq

MAX_DIR_ENTRIES = 2048
MAX_ENTRIES = 8192  # about 600 bytes each: some 5 MB
MAX_MISSES = 4096
MISSES_BEFORE_READING = 1  # lookups in a directory answered one by one before it is read whole

Listing = dict[bytes, tuple[NodeId, AttrRecord | OSError]]  # name -> (node id, attributes or error)


class DirCache:
    """Complete listings of recently walked snapshot directories, by node id."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._dirs: OrderedDict[NodeId, Listing] = OrderedDict()
        self._entries = 0
        self._misses: dict[NodeId, int] = {}

    def get(self, node: NodeId) -> Listing | None:
        listing = self._dirs.get(node)
        if listing is not None:
            self._dirs.move_to_end(node)
        return listing

    def wants(self, node: NodeId) -> bool:
        """A lookup in `node` missed: whether to read the directory whole now."""
        misses = self._misses.get(node, 0)
        if misses >= MISSES_BEFORE_READING:
            self._misses.pop(node, None)
            return True
        if len(self._misses) >= MAX_MISSES:
            self._misses.clear()
        self._misses[node] = misses + 1
        return False

    def put(self, node: NodeId, listing: Listing) -> None:
        if len(listing) > MAX_DIR_ENTRIES or node in self._dirs:
            return
        self._dirs[node] = listing
        self._entries += len(listing)
        while self._entries > self._max_entries and self._dirs:
            _, dropped = self._dirs.popitem(last=False)
            self._entries -= len(dropped)

    def forget_snapshots(self, exists: Callable[[int, Seq], bool]) -> None:
        """Drop every directory of a snapshot for which `exists(volume index, seq)` is false."""
        for node in list(self._dirs):
            index, seq, _ = split_snapshot_node(node)
            if not exists(index, seq):
                self._entries -= len(self._dirs.pop(node))
        self._misses = {node: count for node, count in self._misses.items()
                        if exists(*split_snapshot_node(node)[:2])}

    def clear(self) -> None:
        self._dirs.clear()
        self._misses.clear()
        self._entries = 0


__all__ = ["DirCache", "Listing", "MAX_DIR_ENTRIES", "MAX_ENTRIES", "MISSES_BEFORE_READING"]
