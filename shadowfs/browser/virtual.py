"""The snapshot browser's virtual tree: every node that is not a snapshot object.

One job: the names, node ids, attributes, listings and symlink targets of::

    /                                   the root: by-time, by-volume and one directory per set
    /by-time/<UTC time>            ->   ../<set id>
    /by-volume/<volume>/                one directory per volume shown
    /by-volume/<volume>/@GMT-YYYY.MM.DD-HH.MM.SS  ->  ../../<set id>/<volume>
    /<set id>/                          its volumes' names, each the root of that volume's snapshot

all computed from the sets read from the diff areas (`ShownVolumes.snapshot_sets`),
so they are true of that moment. `browser.ops` answers the kernel with them;
`browser.kernelcache` compares what it handed out with `entries`.

Invariants:
- ``by-volume/<volume>`` is what Samba's vfs_shadow_copy2 reads as a share's
  snapshot directory (design §5.6): one ``@GMT-...`` name per snapshot of
  the volume, the UTC second the diff area gave the snapshot
  (`schema.previous_version_names`), so a name is never shared by two
  snapshots of a volume and never passes to another one. The names are
  symlinks, not directories: a directory node must not have two parents.
- Pure functions of (sets, volumes shown, mount time): no I/O, no await;
  ESTALE for a node whose set or volume is gone, ENOENT for a name that
  does not exist, ENOTDIR for a lookup in a symlink.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3

from shadowfs.browser.attrs import LINK_MODE, VIRTUAL_DIR_MODE, virtual_attrs
from shadowfs.browser.nodes import (
    BY_TIME,
    BY_TIME_NODE,
    BY_VOLUME,
    BY_VOLUME_NODE,
    KIND_MASK,
    LINK_FLAG,
    ROOT_NODE,
    VERSION_LINK_KIND,
    VOLUME_DIR_KIND,
    NodeId,
    snapshot_node,
    split_version_link,
    version_link_node,
    virtual_kind,
    volume_dir_node,
)
from shadowfs.browser.volumes import BrowserVolume, ShownVolumes, SnapshotSet, by_time_names
from shadowfs.diffarea.schema import SnapshotRecord, previous_version_names

log = logging.getLogger(__name__)

Sets = dict[str, SnapshotSet]
Entry = tuple[NodeId, bytes]
@dataclass(frozen=True)
class Version:
    """One snapshot as a previous version of its volume: ``by-volume/<volume>/<name>``."""

    name: bytes
    node: NodeId
    entry: SnapshotSet
    volume: BrowserVolume
    record: SnapshotRecord

    @property
    def target(self) -> bytes:
        return b"../../" + os.fsencode(self.entry.set_id) + b"/" + os.fsencode(self.volume.name)


class VirtualTree:
    """The virtual nodes of one browser: `attrs`, `child`, `listing`, `link_target`, `entries`."""

    def __init__(self, shown: ShownVolumes, mount_ns: int) -> None:
        self._shown = shown
        self._mount_ns = mount_ns
        self._versions_for: Sets | None = None
        self._versions: dict[int, dict[bytes, Version]] = {}

    # ---- previous versions ---------------------------------------------------------------------

    def versions(self, sets: Sets) -> dict[int, dict[bytes, Version]]:
        """volume index -> previous-version name -> Version, for `sets` (kept until they change)."""
        if sets is self._versions_for:
            return self._versions
        members: dict[int, list[tuple[SnapshotSet, BrowserVolume, SnapshotRecord]]] = {}
        for entry in sets.values():
            for volume, record in entry.members.values():
                members.setdefault(volume.index, []).append((entry, volume, record))
        versions: dict[int, dict[bytes, Version]] = {}
        for index, found in members.items():
            names_of = previous_version_names(record for _, _, record in found)
            names: dict[bytes, Version] = {}
            for entry, volume, record in found:
                try:
                    node = version_link_node(index, record.seq)
                except OSError:  # no node id (EOVERFLOW): its snapshot cannot be browsed either
                    continue
                name = os.fsencode(names_of[record.seq])
                names[name] = Version(name, node, entry, volume, record)
            versions[index] = names
        self._versions_for, self._versions = sets, versions
        return versions

    def _version(self, node: NodeId, sets: Sets) -> Version:
        index, _ = split_version_link(node)
        for version in self.versions(sets).get(index, {}).values():
            if version.node == node:
                return version
        raise OSError(errno.ESTALE, "snapshot was deleted")

    def _volume(self, node: NodeId) -> BrowserVolume:
        index = node & ~KIND_MASK
        for volume in self._shown.volumes():
            if volume.index == index:
                return volume
        raise OSError(errno.ESTALE, "volume is no longer shown")

    # ---- what the handlers ask -----------------------------------------------------------------

    def attrs(self, node: NodeId, sets: Sets) -> pyfuse3.EntryAttributes:
        """Attributes of virtual node `node` (ESTALE when its set or volume is gone)."""
        if node == ROOT_NODE:
            return virtual_attrs(node, VIRTUAL_DIR_MODE, 4 + len(sets), self._mount_ns)
        if node == BY_TIME_NODE:
            return virtual_attrs(node, VIRTUAL_DIR_MODE, 2, self._mount_ns)
        if node == BY_VOLUME_NODE:
            return virtual_attrs(node, VIRTUAL_DIR_MODE, 2 + len(self._shown.volumes()), self._mount_ns)
        kind = virtual_kind(node)
        if kind == VOLUME_DIR_KIND:
            self._volume(node)
            return virtual_attrs(node, VIRTUAL_DIR_MODE, 2, self._mount_ns)
        if kind == VERSION_LINK_KIND:
            version = self._version(node, sets)
            return virtual_attrs(node, LINK_MODE, 1, version.entry.created_ns, len(version.target))
        if node & LINK_FLAG:
            entry = self._shown.set_of_link(node, sets)
            return virtual_attrs(node, LINK_MODE, 1, entry.created_ns, len(self._set_link_target(entry)))
        entry = self._shown.set_of_node(node, sets)
        return virtual_attrs(node, VIRTUAL_DIR_MODE, 2 + len(entry.members), entry.created_ns)

    def child(self, parent: NodeId, name: bytes, sets: Sets) -> NodeId:
        """The node that `name` in virtual directory `parent` names: virtual, or the root of a
        volume's snapshot in a set directory (a snapshot node)."""
        if parent == ROOT_NODE:
            if name == BY_TIME:
                return BY_TIME_NODE
            if name == BY_VOLUME:
                return BY_VOLUME_NODE
            entry = sets.get(name.decode("utf-8", "surrogateescape"))
            if entry is None:
                raise OSError(errno.ENOENT, "no such snapshot set")
            return entry.node
        if parent == BY_TIME_NODE:
            entry = by_time_names(sets).get(name)
            if entry is None:
                raise OSError(errno.ENOENT, "no such snapshot time")
            return entry.link_node
        if parent == BY_VOLUME_NODE:
            for volume in self._shown.volumes():
                if os.fsencode(volume.name) == name:
                    return volume_dir_node(volume.index)
            raise OSError(errno.ENOENT, "no such volume")
        kind = virtual_kind(parent)
        if kind == VOLUME_DIR_KIND:
            version = self.versions(sets).get(self._volume(parent).index, {}).get(name)
            if version is None:
                raise OSError(errno.ENOENT, "no such previous version")
            return version.node
        if kind == VERSION_LINK_KIND or parent & LINK_FLAG:
            raise OSError(errno.ENOTDIR, "not a directory")
        member = self._shown.set_of_node(parent, sets).members.get(name.decode("utf-8", "surrogateescape"))
        if member is None:
            raise OSError(errno.ENOENT, "volume not in this snapshot set")
        volume, record = member
        return snapshot_node(volume.index, record.seq, volume.live.root_ino)

    def listing(self, node: NodeId, sets: Sets) -> list[tuple[bytes, NodeId]]:
        """(name, node id) of every entry of virtual directory `node`, sorted by name."""
        if node == ROOT_NODE:
            return [(BY_TIME, BY_TIME_NODE), (BY_VOLUME, BY_VOLUME_NODE)] + sorted(
                (os.fsencode(entry.set_id), entry.node) for entry in sets.values())
        if node == BY_TIME_NODE:
            return sorted((name, entry.link_node) for name, entry in by_time_names(sets).items())
        if node == BY_VOLUME_NODE:
            return sorted((os.fsencode(volume.name), volume_dir_node(volume.index))
                          for volume in self._shown.volumes())
        kind = virtual_kind(node)
        if kind == VOLUME_DIR_KIND:
            versions = self.versions(sets).get(self._volume(node).index, {})
            return sorted((name, version.node) for name, version in versions.items())
        if kind == VERSION_LINK_KIND or node & LINK_FLAG:
            raise OSError(errno.ENOTDIR, "not a directory")
        entry = self._shown.set_of_node(node, sets)
        listing = []
        for name, (volume, record) in entry.members.items():
            try:
                listing.append((os.fsencode(name), snapshot_node(volume.index, record.seq,
                                                                 volume.live.root_ino)))
            except OSError:  # no node id (EOVERFLOW): not listed, its lookup says why
                log.warning("volume %s: snapshot %d has no node id", volume.name, record.seq)
        return sorted(listing)

    def link_target(self, node: NodeId, sets: Sets) -> bytes:
        """The target of a virtual symlink (EINVAL for any other virtual node)."""
        if virtual_kind(node) == VERSION_LINK_KIND:
            return self._version(node, sets).target
        if node & LINK_FLAG:
            return self._set_link_target(self._shown.set_of_link(node, sets))
        raise OSError(errno.EINVAL, "not a symlink")

    @staticmethod
    def _set_link_target(entry: SnapshotSet) -> bytes:
        return b"../" + os.fsencode(entry.set_id)

    def entries(self, sets: Sets) -> dict[Entry, NodeId]:
        """Every virtual entry and the node it names, as `sets` and the volumes shown make them."""
        entries: dict[Entry, NodeId] = {}
        directories = [ROOT_NODE, BY_TIME_NODE, BY_VOLUME_NODE]
        directories += [volume_dir_node(volume.index) for volume in self._shown.volumes()]
        directories += [entry.node for entry in sets.values()]
        for directory in directories:
            for name, child in self.listing(directory, sets):
                entries[(directory, name)] = child
        return entries


__all__ = ["Version", "VirtualTree"]
