"""The snapshot browser's node ids (FUSE inode numbers, also reported as st_ino).

One job: the bit layout of a node id, and the ids of the virtual nodes::

    /                                  ROOT_NODE (1, pyfuse3.ROOT_INODE)
    /by-time/                          BY_TIME_NODE (2)
    /by-time/<time>                    the set's node id | LINK_FLAG
    /by-volume/                        BY_VOLUME_NODE (3)
    /by-volume/<volume>/               VOLUME_DIR_KIND | volume index
    /by-volume/<volume>/@GMT-...       VERSION_LINK_KIND | (index << 20) | seq
    /<set id>/                         SET_KIND | (index << 20) | seq, or COUNTER_KIND | n
    /<set id>/<volume>/...             (volume index << 52) | (seq << 32) | backing ino

Invariants:
- A snapshot object is ``(volume index << 52) | (seq << 32) | backing ino``
  (index 1..4095, seq < 2**20, ino < 2**32; anything bigger is EOVERFLOW).
  The id depends only on the object's identity in one snapshot, so it is
  stable for the life of the snapshot, across browser restarts, and equal for
  every hard link of one file. The snapshot root is the backing root's id.
- Virtual nodes have volume index 0 (`is_snapshot_node` is false): the root is
  1, ``by-time`` is 2, a set directory is ``SET_KIND | (index << 20) | seq``
  and its by-time symlink the same with ``LINK_FLAG`` set, where ``(index,
  seq)`` is the set's lowest (volume index, sequence) member when the browser
  first sees the set. Sequence numbers are never reused, so these ids are
  unique forever and stable across restarts (unless the lowest member was
  deleted in between); within one process a set keeps its first id
  (`SetNodes`). A set whose lowest seq does not fit in 20 bits gets
  ``COUNTER_KIND | n``, n counting from 1 in this process.
- ``by-volume`` is 3, a volume's directory in it ``VOLUME_DIR_KIND | index``
  and a snapshot's previous-version symlink there ``VERSION_LINK_KIND |
  (index << 20) | seq``: unique forever for the same reasons.
- The kind of a virtual node is its bits 32..39 (`virtual_kind`); the root,
  ``by-time`` and ``by-volume`` have none.
- Pure arithmetic: no pyfuse3, no I/O.
- A node id is a `NodeId`, never a `BackingIno` or a `Seq`: the type checker
  keeps the browser's numbers apart from the diff area's. `snapshot_node` and
  `split_snapshot_node` are the only ways between them; the kernel's inode
  numbers become `NodeId`s where a handler receives them (`browser.ops`).
"""

from __future__ import annotations

import errno
import itertools
from typing import NewType

from shadowfs.diffarea.schema import BackingIno, Seq

NodeId = NewType("NodeId", int)
"""A FUSE inode number of the browser (also its st_ino): the bit layout above."""

BY_TIME = b"by-time"
BY_VOLUME = b"by-volume"

ROOT_NODE = NodeId(1)  # pyfuse3.ROOT_INODE
BY_TIME_NODE = NodeId(2)
BY_VOLUME_NODE = NodeId(3)
VOLUME_SHIFT = 52
SEQ_SHIFT = 32
MAX_VOLUME_INDEX = (1 << (64 - VOLUME_SHIFT)) - 1
MAX_SEQ = (1 << (VOLUME_SHIFT - SEQ_SHIFT)) - 1
MAX_INO = (1 << SEQ_SHIFT) - 1
SET_KIND = 1 << 32
COUNTER_KIND = 2 << 32  # set ids for sets whose lowest seq does not fit in 20 bits
VOLUME_DIR_KIND = 3 << 32  # /by-volume/<volume>
VERSION_LINK_KIND = 4 << 32  # /by-volume/<volume>/@GMT-...
KIND_MASK = 0xFF << 32
LINK_FLAG = 1 << 40  # a set's by-time symlink: the set's node id with this bit


def snapshot_node(index: int, seq: Seq, ino: BackingIno) -> NodeId:
    """The node id of backing inode `ino` in snapshot `seq` of volume `index`."""
    if not (0 < index <= MAX_VOLUME_INDEX and 0 <= seq <= MAX_SEQ and 0 < ino <= MAX_INO):
        raise OSError(errno.EOVERFLOW, f"volume {index} seq {seq} inode {ino} has no node id")
    return NodeId((index << VOLUME_SHIFT) | (seq << SEQ_SHIFT) | ino)


def split_snapshot_node(node: NodeId) -> tuple[int, Seq, BackingIno]:
    """(volume index, seq, backing ino) of a snapshot node id."""
    return node >> VOLUME_SHIFT, Seq((node >> SEQ_SHIFT) & MAX_SEQ), BackingIno(node & MAX_INO)


def is_snapshot_node(node: NodeId) -> bool:
    return node >> VOLUME_SHIFT != 0


def link_node_of(set_node: NodeId) -> NodeId:
    """The node id of the by-time symlink of the set whose directory is `set_node`."""
    return NodeId(set_node | LINK_FLAG)


def set_node_of(link_node: NodeId) -> NodeId:
    """The node id of the set directory that the by-time symlink `link_node` points to."""
    return NodeId(link_node & ~LINK_FLAG)


def virtual_kind(node: NodeId) -> int:
    """SET_KIND, COUNTER_KIND, VOLUME_DIR_KIND or VERSION_LINK_KIND of a virtual node (0 for the
    root, ``by-time`` and ``by-volume``); a by-time symlink has its set's kind (and LINK_FLAG)."""
    return node & KIND_MASK


def volume_dir_node(index: int) -> NodeId:
    """The node id of volume `index`'s directory in ``by-volume``."""
    return NodeId(VOLUME_DIR_KIND | index)


def version_link_node(index: int, seq: Seq) -> NodeId:
    """The node id of snapshot `seq`'s previous-version symlink in volume `index`'s directory."""
    if not (0 < index <= MAX_VOLUME_INDEX and 0 <= seq <= MAX_SEQ):
        raise OSError(errno.EOVERFLOW, f"volume {index} seq {seq} has no node id")
    return NodeId(VERSION_LINK_KIND | (index << 20) | seq)


def split_version_link(node: NodeId) -> tuple[int, Seq]:
    """(volume index, seq) of a previous-version symlink's node id."""
    return (node >> 20) & MAX_VOLUME_INDEX, Seq(node & MAX_SEQ)


class SetNodes:
    """The node ids of snapshot set directories in this process: a set keeps its first id."""

    def __init__(self) -> None:
        self._set_nodes: dict[str, NodeId] = {}
        self._node_sets: dict[NodeId, str] = {}
        self._set_counter = itertools.count(1)

    def node(self, set_id: str, index: int, seq: Seq) -> NodeId:
        """The node id of set `set_id`, whose lowest member is snapshot `seq` of volume `index`."""
        node = self._set_nodes.get(set_id)
        if node is None:
            if seq <= MAX_SEQ:
                node = NodeId(SET_KIND | (index << 20) | seq)
            else:
                node = NodeId(COUNTER_KIND | next(self._set_counter))
            if node in self._node_sets:  # cannot happen with unique (index, seq) pairs
                node = NodeId(COUNTER_KIND | next(self._set_counter))
            self._set_nodes[set_id] = node
            self._node_sets[node] = set_id
        return node

    def set_id(self, node: NodeId) -> str | None:
        """The set id a set directory's node id was given to, or None."""
        return self._node_sets.get(node)


__all__ = ["BY_TIME", "BY_TIME_NODE", "BY_VOLUME", "BY_VOLUME_NODE", "COUNTER_KIND", "KIND_MASK",
           "LINK_FLAG", "MAX_INO", "MAX_SEQ", "MAX_VOLUME_INDEX", "NodeId", "ROOT_NODE", "SEQ_SHIFT",
           "SET_KIND", "SetNodes", "VERSION_LINK_KIND", "VOLUME_DIR_KIND", "VOLUME_SHIFT",
           "is_snapshot_node", "link_node_of", "set_node_of", "snapshot_node", "split_snapshot_node",
           "split_version_link", "version_link_node", "virtual_kind", "volume_dir_node"]
