"""Regular files of the snapshot browser: what an open makes, and what a read by inode knows.

One job: the state behind the browser's ``open``, ``read``, ``read_inode`` and
``release`` handlers (`browser.ops`), in two shapes:

- An open file (`OpenFile`): its snapshot object, its size at the snapshot
  and a descriptor of the live file of its own, so that reads in worker
  threads never share a cached descriptor that an LRU could close; closed at
  release once no read uses it. This is how every file is read on a stock
  pyfuse3.
- Reads by inode (`InodeFiles`), with pyfuse3's ``read_inode`` (patch 0004,
  `fuse_adapter.binding`): ``open`` makes its usual checks and then answers
  ENOSYS, after which the kernel opens regular files without asking (no OPEN,
  no RELEASE per file; it keeps their page cache, which a snapshot never makes
  stale) and every READ comes with the inode and handle 0. The size at the
  snapshot and whether the last read found captured blocks are kept per node
  in a bounded least-recently-used table. The first read of a node opens the
  live file once for both its attributes and its data; later ones read
  through the volume's shared descriptors (`LiveObjects.borrow`).

Invariants:
- An entry of `InodeFiles` belongs to one `BrowserVolume` object: a node id
  whose volume was replaced since (same index, another diff area) misses.
  Sequence numbers only grow, so a node id names one object of one snapshot
  and its size at the snapshot never changes.
- The blocking functions here (`open_file`, `file_size`, `read_by_inode`) run
  wherever `BrowserOperations._offload` runs them; `InodeFiles` is used on the
  trio thread only.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from dataclasses import dataclass

from shadowfs.browser.nodes import NodeId
from shadowfs.browser.volumes import BrowserVolume
from shadowfs.diffarea.schema import BackingIno, Seq
from shadowfs.snapshot.view import SnapshotView

INODE_FILES = 16384  # nodes whose size at the snapshot reads by inode remember


@dataclass
class OpenFile:
    """An open regular file: its snapshot object, size at the snapshot, and a descriptor
    of the live file of its own (None if the live inode is gone), so that reads in
    worker threads never share a cached descriptor that an LRU could close."""

    volume: BrowserVolume
    seq: Seq
    ino: BackingIno
    size: int
    fd: int | None
    readers: int = 0
    released: bool = False
    captured: bool = False  # the last read found captured blocks: look them up before reading

    def close_when_idle(self) -> None:
        if self.released and self.readers == 0 and self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class Known:
    """What reads by inode remember of one node: its size at the snapshot, and whether the
    last read found captured blocks (then they are looked up before reading)."""

    volume: BrowserVolume
    size: int
    captured: bool = False


class InodeFiles:
    """`Known` per node id, the `capacity` most recently used (trio thread only)."""

    def __init__(self, capacity: int = INODE_FILES) -> None:
        self._capacity = capacity
        self._known: OrderedDict[NodeId, Known] = OrderedDict()

    def get(self, node: NodeId, volume: BrowserVolume) -> Known | None:
        known = self._known.get(node)
        if known is None or known.volume is not volume:
            return None
        self._known.move_to_end(node)
        return known

    def put(self, node: NodeId, known: Known) -> None:
        self._known[node] = known
        self._known.move_to_end(node)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


def _regular_size(view: SnapshotView, ino: BackingIno, fd: int | None = None) -> int:
    record = view.attr(ino, fd=fd)
    if record.is_dir:
        raise OSError(errno.EISDIR, "is a directory")
    if not record.is_reg:
        raise OSError(errno.EINVAL, "not a regular file")
    return record.size


def open_file(view: SnapshotView, ino: BackingIno) -> tuple[int, int | None]:
    """(size at the snapshot, own descriptor of the live file or None) of a regular file;
    EIO if damaged, EISDIR or EINVAL if not a regular file (blocking)."""
    try:
        fd: int | None = view.live.open(ino)
    except OSError:  # gone (every block was captured), or not a file: the attributes say
        fd = None
    try:
        return _regular_size(view, ino, fd), fd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise


def read_by_inode(view: SnapshotView, volume: BrowserVolume, ino: BackingIno, offset: int, size: int,
                  known: Known | None) -> tuple[bytes | bytearray, Known]:
    """The bytes [offset, offset+size) of `ino` at the snapshot (`SnapshotView.read_hinted`), and
    what to remember of it (blocking). The first read of a node opens the live file once for its
    attributes and data (as `open_file`); later ones borrow the volume's shared descriptors."""
    fd = None
    if known is None:
        size_then, fd = open_file(view, ino)
        known = Known(volume, size_then)
    try:
        data, captured = view.read_hinted(ino, offset, size, known.size, fd, live_first=not known.captured)
    finally:
        if fd is not None:
            os.close(fd)
    return data, known if captured == known.captured else Known(volume, known.size, captured)
