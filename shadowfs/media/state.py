"""The tree a chain of images describes: records applied in order, with every rule checked.

One job: fold the manifests of a chain (full, then incrementals, or full then
a differential) into the state of each volume — path -> latest metadata and
where its complete content lives — and refuse any chain a restore could not
apply exactly. `restore` runs this over the whole chain before it writes
anything; `backup` uses the state of the base chain to find what changed;
`verify` uses it to check that a chain is consistent.

Rules (a `MediaError` names the image, line and path that break one):
- the first image of a chain is a full (or copy) image and puts the volume
  root; every put's parent exists and is a directory;
- within one image a path is put at most once, and every delete comes before
  every put of its volume; a delete names an existing path and removes it
  with everything below it;
- a put never changes the kind of an existing path (the image deletes it
  first); ``patch`` and ``keep`` data need an existing regular file;
  ``link`` names an existing regular file; ``ref`` data names an earlier image
  of the chain and a blob inside its packs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shadowfs.linux.confined import join, split_parent
from shadowfs.media.layout import MediaError
from shadowfs.media.records import DataRef, Record


@dataclass
class PathState:
    """One path after the chain so far."""

    record: Record
    image: str
    whole: tuple[str, DataRef] | None = None  # (image id, blob) holding the whole content, when one does


@dataclass
class VolumeState:
    """Every path of one volume."""

    entries: dict[str, PathState] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)

    def remove(self, path: str) -> None:
        for name in list(self.children.get(path, ())):
            self.remove(join(path, name))
        self.children.pop(path, None)
        del self.entries[path]
        if path:
            parent, name = split_parent(path)
            self.children[parent].discard(name)

    def paths(self) -> list[str]:
        """Every path, parents before children, names in order."""
        out: list[str] = []

        def visit(path: str) -> None:
            out.append(path)
            for name in sorted(self.children.get(path, ())):
                visit(join(path, name))

        if "" in self.entries:
            visit("")
        return out


PackSizes = Callable[[str, int], int | None]


class ChainState:
    """The state of every volume after the images applied so far."""

    def __init__(self, pack_sizes: PackSizes) -> None:
        self.volumes: dict[str, VolumeState] = {}
        self.applied: list[str] = []
        self._pack_sizes = pack_sizes

    def volume(self, name: str) -> VolumeState:
        return self.volumes.setdefault(name, VolumeState())

    def _check_blob(self, image: str, ref: DataRef, where: str) -> None:
        if ref.length == 0:
            return
        size = self._pack_sizes(image, ref.pack)
        if size is None:
            raise MediaError(f"{where}: image {image} has no pack {ref.pack}")
        if ref.offset + ref.length > size:
            raise MediaError(f"{where}: blob {ref.offset}+{ref.length} lies outside pack {ref.pack} "
                             f"of image {image} ({size} bytes)")

    def apply(self, image_id: str, image_type: str, records: Iterable[Record]) -> int:
        """Apply one image's records; returns how many there were."""
        if not self.applied and image_type not in ("full", "copy"):
            raise MediaError(f"image {image_id}: a chain must start with a full image, not {image_type}")
        if self.applied and image_type in ("full", "copy"):
            raise MediaError(f"image {image_id}: a {image_type} image cannot follow other images in a chain")
        put_seen: set[tuple[str, str]] = set()
        puts_started: set[str] = set()
        count = 0
        for count, record in enumerate(records, 1):
            where = f"image {image_id}: manifest line {count} ({record.volume}:{record.path or '/'})"
            state = self.volume(record.volume)
            if record.op == "delete":
                if record.volume in puts_started:
                    raise MediaError(f"{where}: delete after a put of the same volume")
                if record.path not in state.entries:
                    raise MediaError(f"{where}: deletes a path that does not exist")
                state.remove(record.path)
                continue
            puts_started.add(record.volume)
            key = (record.volume, record.path)
            if key in put_seen:
                raise MediaError(f"{where}: path put twice in one image")
            put_seen.add(key)
            self._put(state, image_id, record, where)
        for name, state in self.volumes.items():
            if state.entries and "" not in state.entries:
                raise MediaError(f"image {image_id}: volume {name} has no root")
        self.applied.append(image_id)
        return count

    def _put(self, state: VolumeState, image_id: str, record: Record, where: str) -> None:
        if record.path:
            parent, _, name = record.path.rpartition("/")  # records are checked paths
            above = state.entries.get(parent)
            if above is None or above.record.kind != "dir":
                raise MediaError(f"{where}: parent directory is not in the image chain")
        existing = state.entries.get(record.path)
        if existing is not None and existing.record.kind != record.kind:
            raise MediaError(f"{where}: replaces a {existing.record.kind} by a {record.kind} "
                             "without deleting it")
        whole: tuple[str, DataRef] | None = None
        if record.link is not None:
            leader = state.entries.get(record.link)
            if leader is None or leader.record.kind != "file":
                raise MediaError(f"{where}: hard link to {record.link!r}, which is not a regular file here")
            whole = leader.whole
        elif record.data is not None:
            data = record.data
            if data.how in ("patch", "keep") and existing is None:
                raise MediaError(f"{where}: {data.how} data for a file that does not exist yet")
            if data.how == "full":
                self._check_blob(image_id, data, where)
                whole = (image_id, data)
            elif data.how == "ref":
                assert data.image is not None
                if data.image not in self.applied:
                    raise MediaError(f"{where}: refers to image {data.image}, "
                                     "which is not earlier in the chain")
                self._check_blob(data.image, data, where)
                whole = (data.image, data)
            elif data.how == "patch":
                self._check_blob(image_id, data, where)
            else:  # keep
                whole = existing.whole if existing is not None else None
        if record.partial is not None:
            whole = None  # only some ranges of the file are in the blob
        state.entries[record.path] = PathState(record, image_id, whole)
        if record.kind == "dir":
            state.children.setdefault(record.path, set())
        if record.path:
            state.children.setdefault(parent, set()).add(name)
