"""What the kernel may cache of the browser's virtual tree, and taking it back.

One job: the virtual entries (`browser.virtual`: a set's name in the root, a
name in ``by-time`` or ``by-volume``, a volume's name in a set directory) and
the attributes of virtual nodes are handed to the kernel with long timeouts
(`attrs.VIRTUAL_TIMEOUT`), so a path walk does not ask the browser again for every component. `KernelCache`
notes each of them as it is replied, and when the sets change finds those no
longer true and tells the kernel to forget them (`pyfuse3.invalidate_entry`,
`pyfuse3.invalidate_inode`).

Invariants:
- Every positive virtual entry and every virtual attribute reply is noted
  before it is sent (`note_entry`, `note_attrs`); a note stays until it is
  found stale, and is then dropped at once, so each stale one is invalidated
  once. Negative virtual lookups answer ENOENT, which the kernel does not
  cache, so a new set or name shows at once without an invalidation.
- `stale` is computed on the trio thread (where the handlers note), from the
  sets read at that moment: a reply noted after it was computed from sets at
  least as new, so nothing is missed.
- The kernel calls run in a worker thread (`invalidate`): invalidating an
  entry waits until the kernel has finished any request on its directory,
  and those requests need the trio thread to be answered. So `invalidate` is
  awaited only where the caller holds no directory lock of the kernel's (the
  control channel, the watch task, opendir and getattr); a handler that does
  (lookup, readdir) never waits for it. An entry or inode the kernel has
  already forgotten (ENOENT) is not an error; nothing here raises.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import pyfuse3
import trio

from shadowfs.browser.attrs import attrs_signature
from shadowfs.browser.nodes import NodeId, snapshot_node
from shadowfs.browser.volumes import SnapshotSet
from shadowfs.diffarea.schema import BackingIno

log = logging.getLogger(__name__)

Entry = tuple[NodeId, bytes]


class KernelCache:
    """The virtual entries and attributes handed to the kernel and not yet taken back."""

    def __init__(self) -> None:
        self._entries: dict[Entry, NodeId] = {}
        self._attrs: dict[NodeId, tuple[int, ...]] = {}
        self.invalidations = 0  # entries and inodes the kernel was told to forget (status, tests)

    def note_entry(self, parent: NodeId, name: bytes, child: NodeId) -> None:
        self._entries[(parent, name)] = child

    def note_attrs(self, attrs: pyfuse3.EntryAttributes) -> None:
        self._attrs[NodeId(attrs.st_ino)] = attrs_signature(attrs)

    def stale(self, child_now: Callable[[NodeId, bytes], NodeId | None],
              attrs_now: Callable[[NodeId], pyfuse3.EntryAttributes | None]
              ) -> tuple[list[Entry], list[NodeId]]:
        """(entries, inodes) noted but no longer true, dropped from the notes.

        `child_now(parent, name)`: the node the entry names now, None if none;
        `attrs_now(node)`: the node's attributes now, None if it is gone (a gone
        node's attributes need no invalidation: nothing reaches it by name).
        """
        entries = [entry for entry, child in self._entries.items() if child_now(*entry) != child]
        for entry in entries:
            del self._entries[entry]
        inodes: list[NodeId] = []
        for node, signature in list(self._attrs.items()):
            attrs = attrs_now(node)
            if attrs is None or attrs_signature(attrs) != signature:
                del self._attrs[node]
                if attrs is not None:
                    inodes.append(node)
        return entries, inodes

    async def invalidate(self, entries: list[Entry], inodes: list[NodeId], *, data: bool = False) -> None:
        """Tell the kernel to forget `entries` and the attributes of `inodes` (with `data`, their
        cached pages too), from a worker thread; returns when the kernel has done so (see the
        module's invariants for who may wait for this)."""
        if not entries and not inodes:
            return
        self.invalidations += len(entries) + len(inodes)
        # abandoned on cancellation: at unmount nobody answers the request it may wait for
        await trio.to_thread.run_sync(_invalidate, entries, inodes, data, abandon_on_cancel=True)


def damaged_nodes(sets: dict[str, SnapshotSet], volume_name: str, inos: list[int]) -> list[NodeId]:
    """The node ids of backing inodes `inos` of volume `volume_name` in every snapshot shown."""
    nodes = []
    for entry in sets.values():
        member = entry.members.get(volume_name)
        if member is None:
            continue
        volume, record = member
        for ino in inos:
            try:
                nodes.append(snapshot_node(volume.index, record.seq, BackingIno(ino)))
            except OSError:  # no node id: never handed out
                continue
    return nodes


def _invalidate(entries: list[Entry], inodes: list[NodeId], data: bool = False) -> None:
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as exc:
            _log_failure(exc, f"entry {name!r} of node {parent:#x}")
    for node in inodes:
        try:
            pyfuse3.invalidate_inode(node, attr_only=not data)
        except OSError as exc:
            _log_failure(exc, f"attributes of node {node:#x}")


def _log_failure(exc: OSError, what: str) -> None:
    if exc.errno != errno.ENOENT:  # ENOENT: the kernel had forgotten it already
        log.warning("cannot invalidate %s: %s", what, exc)


__all__ = ["Entry", "KernelCache", "damaged_nodes"]
