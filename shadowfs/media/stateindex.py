"""The state index: what an image's chain restores, saved beside the image for the next backup.

One job: keep, per image, the folded state of its chain (every path of every
volume with its inode, kind, size, content checksum and where its whole
content lives) in one compact file, ``state.json``, so that an incremental or
differential backup learns its base in one JSON parse instead of parsing and
folding every manifest of the chain (`shadowfs.media.state`), which costs
tens of microseconds per file.

Invariants:
- the index of image I describes exactly what `ChainState` gives after
  applying I's chain and I (`from_chain` builds that; `media verify` compares
  the two);
- it is listed in ``COMPLETE`` like every other file of the image, so damage is
  caught by its checksum;
- it is only ever a shortcut for backups: restore and verify fold the
  manifests themselves. A missing, damaged or malformed index makes `load`
  return None and the backup fold the chain instead; so does one whose paths
  are unsafe (`check_rel_paths`) or lack a parent directory.

Format::

    {"format": "shadowfs-state", "version": 2, "image": id,
     "volumes": {name: {"path": [...], "ino": [...], "kind": [...], "size": [...],
                        "sha256": [hex or null, ...],
                        "images": [image id, ...],
                        "whole_image": [index into images, or -1 for no whole content, ...],
                        "whole_pack": [...], "whole_offset": [...], "whole_length": [...],
                        "whole_sha256": [hex, or null for the path's own sha256, ...],
                        "whole_extents": [number of extents, ...],
                        "extents": [offset, length, offset, length, ...]}}}

the lists of one volume parallel (but ``images`` and ``extents``), the root ``""``
among the paths. An incremental or differential image that changed few paths
keeps a *delta* instead, which costs nothing to write::

    {"format": "shadowfs-state", "version": 2, "image": id, "delta_of": full_id, "records": n}

meaning: the full index of image ``full_id`` (an earlier image of the chain,
itself with a full index), then the manifests of every image after it in the
chain, this one included (``n`` records in all), folded on top. A delta is
written while ``n`` stays within `DELTA_RECORDS` and a fiftieth of the full
index's paths, so loading one never folds much. Only flat lists of numbers and strings: they parse several
times faster than a list per path, and a loaded path keeps its row number
instead of its content location, which is put together only when read
(`VolumeIndex.whole_of`) or written again (`StateIndex.encode`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from functools import cached_property, partial
from itertools import accumulate
from typing import Any, NamedTuple

from shadowfs.diffarea.schema import KINDS
from shadowfs.linux.confined import UnsafePath, check_rel_paths
from shadowfs.media.layout import STATE_INDEX, MediaError
from shadowfs.media.reader import Image
from shadowfs.media.records import IMAGE_ID_RE, SHA256_RE, DataRef, Record
from shadowfs.media.state import ChainState

log = logging.getLogger(__name__)

FORMAT = "shadowfs-state"
VERSION = 2
DELTA_RECORDS = 256  # a delta may always hold this many records, more for a big index

Whole = tuple[str, DataRef]


class IndexEntry(NamedTuple):
    """One path of a volume as the chain restores it."""

    ino: int
    kind: str
    size: int
    sha256: str | None
    # None, or where the whole content lives: a row of the loaded columns (`WholeTable`), or
    # [image, pack, offset, length, sha256, extents] for a path put since; see `whole_of`
    whole: int | list[Any] | None


class WholeTable:
    """The content-location columns of one loaded volume (see the module docstring), unchecked
    until a row is read."""

    def __init__(self, images: list[Any], image: list[int], pack: list[int], offset: list[int],
                 length: list[int], sha256: list[Any], own_sha256: list[Any], counts: list[int],
                 extents: list[Any]) -> None:
        self.images = images
        self.image = image
        self.pack = pack
        self.offset = offset
        self.length = length
        self.sha256 = sha256  # None: the path's own, in `own_sha256`
        self.own_sha256 = own_sha256
        self.counts = counts
        self.extents = extents

    @cached_property
    def starts(self) -> list[int]:
        """Where each row's extents begin in `extents` (and, last, where they end)."""
        return [0, *accumulate(c + c for c in self.counts)]

    def row(self, row: int) -> list[Any]:
        """Row `row` as [image, pack, offset, length, sha256, extents] (values still unchecked)."""
        flat = self.extents[self.starts[row]:self.starts[row + 1]]
        image = self.images[self.image[row]] if 0 <= self.image[row] < len(self.images) else None
        sha = self.sha256[row] if self.sha256[row] is not None else self.own_sha256[row]
        return [image, self.pack[row], self.offset[row], self.length[row], sha,
                [flat[i:i + 2] for i in range(0, len(flat), 2)]]


class VolumeIndex:
    """Every path of one volume: path -> `IndexEntry`. Deletes are folded in lazily, in one pass.

    `images` are the images an entry's content may live in (the chain); content locations are
    checked against them when read (`whole_of`), not when loaded: a backup reads a few of them."""

    def __init__(self, entries: dict[str, IndexEntry] | None = None, images: set[str] | None = None,
                 table: WholeTable | None = None) -> None:
        self.entries: dict[str, IndexEntry] = entries if entries is not None else {}
        self.images: set[str] = images if images is not None else set()
        self.table = table
        self._dead_dirs: set[str] = set()

    def whole_list(self, whole: int | list[Any] | None) -> list[Any] | None:
        """An entry's content location as [image, pack, offset, length, sha256, extents] (unchecked)."""
        if whole is None or isinstance(whole, list):
            return whole
        if self.table is None:
            raise MediaError("state index: a content location refers to no loaded table")
        return self.table.row(whole)

    def whole_of(self, entry: IndexEntry) -> Whole | None:
        """(image, blob) holding the entry's whole content, or None; MediaError if malformed."""
        whole = self.whole_list(entry.whole)
        return None if whole is None else _decode_whole(whole, self.images, "state index")

    def delete(self, path: str) -> None:
        """Remove `path` and, if it is a directory, everything below it."""
        entry = self.entries.pop(path, None)
        if entry is not None and entry.kind == "dir":
            self._dead_dirs.add(path)

    def settle(self) -> None:
        """Drop every path below a deleted directory (call before puts and reads)."""
        if not self._dead_dirs:
            return
        dead = self._dead_dirs

        def below_dead(path: str) -> bool:
            while path:
                path = path.rpartition("/")[0]
                if path in dead:
                    return True
            return False

        self.entries = {p: e for p, e in self.entries.items() if not below_dead(p)}
        self._dead_dirs = set()

    def put(self, image_id: str, record: Record) -> None:
        """Apply one put record of image `image_id` (after `settle`), as `ChainState` does."""
        existing = self.entries.get(record.path)
        whole: int | list[Any] | None = None
        if record.link is not None:
            leader = self.entries.get(record.link)
            whole = leader.whole if leader is not None else None
        elif record.data is not None:
            data = record.data
            if data.how == "full":
                whole = _whole_json((image_id, data))
            elif data.how == "ref" and data.image is not None:
                whole = _whole_json((data.image, data))
            elif data.how == "keep":
                whole = existing.whole if existing is not None else None
        if record.partial is not None:
            whole = None
        self.images.add(image_id)
        self.entries[record.path] = IndexEntry(record.ino, record.kind, record.size, record.sha256, whole)


class StateIndex:
    """Every volume of one image's chain."""

    def __init__(self, volumes: dict[str, VolumeIndex] | None = None) -> None:
        self.volumes: dict[str, VolumeIndex] = volumes if volumes is not None else {}
        # set by `load`: the image whose full index this one starts from, the records folded on
        # top of it since, and how many paths that full index had
        self.full_image: str | None = None
        self.records_since_full = 0
        self.full_paths = 0

    def delta_for(self, image_id: str, new_records: int) -> bytes | None:
        """The delta index of image `image_id` (whose base this index is, `new_records` records
        on top), or None when a full index is due (see the module docstring)."""
        if self.full_image is None:
            return None
        records = self.records_since_full + new_records
        if records > max(DELTA_RECORDS, self.full_paths // 50):
            return None
        doc = {"format": FORMAT, "version": VERSION, "image": image_id, "delta_of": self.full_image,
               "records": records}
        return json.dumps(doc, separators=(",", ":")).encode()

    def apply(self, image_id: str, records: Iterable[Record]) -> None:
        """Fold one image's records (checked ones: they come from our own writer or the manifest)."""
        for record in records:
            self.add(image_id, record)

    def add(self, image_id: str, record: Record) -> None:
        volume = self.volumes.setdefault(record.volume, VolumeIndex())
        if record.op == "delete":
            volume.delete(record.path)
        else:
            volume.settle()
            volume.put(image_id, record)

    def encode(self, image_id: str) -> bytes:
        volumes = {name: _encode_volume(volume) for name, volume in sorted(self.volumes.items())}
        doc = {"format": FORMAT, "version": VERSION, "image": image_id, "volumes": volumes}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                          check_circular=False).encode("utf-8", "surrogateescape")

    def comparable(self) -> dict[str, dict[str, tuple[Any, ...]]]:
        """Every entry as plain values (how a content location was reached does not matter)."""
        out: dict[str, dict[str, tuple[Any, ...]]] = {}
        for name, volume in self.volumes.items():
            volume.settle()
            if volume.entries:
                out[name] = {p: (e.ino, e.kind, e.size, e.sha256, volume.whole_list(e.whole))
                             for p, e in volume.entries.items()}
        return out


def _encode_volume(volume: VolumeIndex) -> dict[str, list[Any]]:
    """The columns of one volume. Column by column, in comprehensions: a row loaded from the base
    index is copied from its table, a path put since from its list."""
    volume.settle()
    paths = list(volume.entries)
    values = list(volume.entries.values())
    wholes = [e.whole for e in values]
    shas = [e.sha256 for e in values]
    table = volume.table or WholeTable([], [], [], [], [], [], [], [], [])
    images = list(table.images)
    number = {image: i for i, image in enumerate(images)}
    for whole in wholes:
        if isinstance(whole, list) and whole[0] not in number:
            number[whole[0]] = len(images)
            images.append(whole[0])
    t_image, t_pack, t_offset, t_length = table.image, table.pack, table.offset, table.length
    t_sha, t_own, t_extents, t_counts = table.sha256, table.own_sha256, table.extents, table.counts
    t_starts = table.starts if any(isinstance(w, int) for w in wholes) else []
    flatten = itertools.chain.from_iterable
    whole_sha = [(t_sha[w] or t_own[w]) if isinstance(w, int) else w[4] if w is not None else None
                 for w in wholes]
    return {
        "path": paths,
        "ino": [e.ino for e in values],
        "kind": [e.kind for e in values],
        "size": [e.size for e in values],
        "sha256": shas,
        "images": images,
        "whole_image": [-1 if w is None else t_image[w] if isinstance(w, int) else number[w[0]]
                        for w in wholes],
        "whole_pack": [0 if w is None else t_pack[w] if isinstance(w, int) else w[1] for w in wholes],
        "whole_offset": [0 if w is None else t_offset[w] if isinstance(w, int) else w[2] for w in wholes],
        "whole_length": [0 if w is None else t_length[w] if isinstance(w, int) else w[3] for w in wholes],
        "whole_sha256": [None if w == s else w for w, s in zip(whole_sha, shas, strict=True)],
        "whole_extents": [0 if w is None else t_counts[w] if isinstance(w, int) else len(w[5])
                          for w in wholes],
        "extents": list(flatten(t_extents[t_starts[w]:t_starts[w + 1]] if isinstance(w, int)
                                else flatten(w[5]) for w in wholes if w is not None)),
    }


def _whole_json(whole: Whole) -> list[Any]:
    image, ref = whole
    return [image, ref.pack, ref.offset, ref.length, ref.sha256, [list(e) for e in ref.extents]]


def from_chain(state: ChainState) -> StateIndex:
    """The index of a folded chain."""
    index = StateIndex()
    for name, volume in state.volumes.items():
        entries = {}
        for path, item in volume.entries.items():
            record = item.record
            entries[path] = IndexEntry(record.ino, record.kind, record.size, record.sha256,
                                       None if item.whole is None else _whole_json(item.whole))
        index.volumes[name] = VolumeIndex(entries, set(state.applied))
    return index


class Delta(NamedTuple):
    """A delta index: the full index of `of`, and `records` records folded on top since."""

    of: str
    records: int


def decode(data: bytes, image_id: str, chain: list[str]) -> StateIndex | Delta:
    """Parse an index; MediaError names what is wrong. `chain` is the image's chain, itself included."""
    try:
        doc = json.loads(data.decode("utf-8", "surrogateescape"))
    except ValueError:
        raise MediaError(f"image {image_id}: {STATE_INDEX} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION \
            or doc.get("image") != image_id:
        raise MediaError(f"image {image_id}: {STATE_INDEX} is not a version {VERSION} state index "
                         "of this image")
    if "delta_of" in doc:
        of, records = doc["delta_of"], doc.get("records")
        if not (isinstance(of, str) and of in chain[:-1] and type(records) is int and records >= 0):
            raise MediaError(f"image {image_id}: {STATE_INDEX}: a delta of no earlier image of its chain")
        return Delta(of, records)
    if not isinstance(doc.get("volumes"), dict):
        raise MediaError(f"image {image_id}: {STATE_INDEX} has no volumes")
    images = set(chain)
    index = StateIndex()
    for name, columns in doc["volumes"].items():
        where = f"image {image_id}: {STATE_INDEX}: volume {name}"
        index.volumes[name] = _decode_volume(columns, images, where)
    return index


def resolve(image: Image) -> StateIndex:
    """What the chain up to `image` restores, from its index (a delta resolved through the full
    index it starts from and the manifests after that); MediaError if any of it is missing,
    damaged or malformed."""
    if STATE_INDEX not in image.files:
        raise MediaError(f"image {image.id} has no {STATE_INDEX}")
    chain = [*image.info.chain, image.id]
    found = decode(image.read_checked(STATE_INDEX), image.id, chain)
    if isinstance(found, StateIndex):
        found.full_image = image.id
        found.full_paths = sum(len(v.entries) for v in found.volumes.values())
        return found
    start = Image(image.media, found.of)
    if STATE_INDEX not in start.files:
        raise MediaError(f"image {image.id}: {STATE_INDEX} is a delta of image {found.of}, which has none")
    index = decode(start.read_checked(STATE_INDEX), start.id, chain[:chain.index(found.of) + 1])
    if not isinstance(index, StateIndex):
        raise MediaError(f"image {image.id}: {STATE_INDEX} is a delta of a delta")
    index.full_image = found.of
    index.full_paths = sum(len(v.entries) for v in index.volumes.values())
    folded = 0
    for later in chain[chain.index(found.of) + 1:]:
        records = list(Image(image.media, later).records())
        folded += len(records)
        index.apply(later, records)
    if folded != found.records:
        raise MediaError(f"image {image.id}: {STATE_INDEX} says {found.records} records since image "
                         f"{found.of}, the manifests hold {folded}")
    for name, volume in index.volumes.items():
        volume.settle()
        _check_tree(list(volume.entries), [e.kind for e in volume.entries.values()],
                    f"image {image.id}: {STATE_INDEX} resolved: volume {name}")
    index.records_since_full = folded
    return index


def load(image: Image) -> StateIndex | None:
    """The image's index, or None when it has none or it is damaged (the caller folds the chain)."""
    if STATE_INDEX not in image.files:
        return None
    try:
        return resolve(image)
    except MediaError as exc:
        log.warning("%s; folding the chain's manifests instead", exc)
        return None


_COLUMNS = ("path", "ino", "kind", "size", "sha256", "whole_image", "whole_pack", "whole_offset",
            "whole_length", "whole_sha256", "whole_extents")
_INT_COLUMNS = ("ino", "size", "whole_image", "whole_pack", "whole_offset", "whole_length", "whole_extents")


def _decode_volume(columns: Any, chain: set[str], where: str) -> VolumeIndex:
    """Checked column by column with set and regular-expression operations: a volume of many
    paths loads in milliseconds, and nothing in it is trusted until checked. Content locations
    are checked for shape here and for values when read (`VolumeIndex.whole_of`)."""
    if not isinstance(columns, dict) or not all(isinstance(columns.get(c), list)
                                                for c in (*_COLUMNS, "images", "extents")):
        raise MediaError(f"{where}: missing columns")
    paths, inos, kinds, sizes, shas, w_image, w_pack, w_offset, w_length, w_sha, w_counts = \
        (columns[c] for c in _COLUMNS)
    images, extents = columns["images"], columns["extents"]
    if len({len(columns[c]) for c in _COLUMNS}) != 1 or not paths:
        raise MediaError(f"{where}: columns of different lengths, or empty")
    digests = [h for h in shas if h is not None] + [h for h in w_sha if h is not None]
    if not (set(map(type, paths)) == {str} and set(kinds) <= KINDS.keys()
            and all(set(map(type, columns[c])) == {int} for c in _INT_COLUMNS)
            and min(inos) >= 0 and min(sizes) >= 0 and min(w_image) >= -1 and max(w_image) < len(images)
            and min(w_counts) >= 0 and set(map(type, extents)) <= {int}
            and 2 * sum(w_counts) == len(extents) and set(images) <= chain
            and set(map(type, digests)) <= {str} and set(map(len, digests)) <= {64}
            and _lower_hex("".join(digests))):
        raise MediaError(f"{where}: a value of the wrong type")
    wholes = [None if i < 0 else row for row, i in enumerate(w_image)]
    rows = zip(inos, kinds, sizes, shas, wholes, strict=True)
    # tuple.__new__ through partial stays in C: IndexEntry._make is a Python call per row
    entries = dict(zip(paths, map(partial(tuple.__new__, IndexEntry), rows), strict=True))
    if "" not in entries or entries[""].kind != "dir" or len(entries) != len(paths):
        raise MediaError(f"{where}: no root directory, or a path twice")
    try:
        check_rel_paths(paths)
    except UnsafePath as exc:
        raise MediaError(f"{where}: {exc}") from None
    _check_tree(paths, kinds, where)
    table = WholeTable(images, w_image, w_pack, w_offset, w_length, w_sha, shas, w_counts, extents)
    return VolumeIndex(entries, chain, table)


def _check_tree(paths: list[str], kinds: list[str], where: str) -> None:
    """Every path's parent is a directory of the same volume, and the root is one."""
    dirs = {p for p, k in zip(paths, kinds, strict=True) if k == "dir"}
    if "" not in dirs:
        raise MediaError(f"{where}: no root directory")
    orphans = {p.rpartition("/")[0] for p in paths if p} - dirs
    if orphans:
        raise MediaError(f"{where}: {sorted(orphans)[0]!r} is not a directory, but has entries")


def _lower_hex(text: str) -> bool:
    """Whether `text` is lower-case hexadecimal digits only (C-speed checks: no regular
    expression over megabytes; `fromhex` alone would skip white space)."""
    try:
        raw = text.encode("ascii")
        bytes.fromhex(text)
    except (UnicodeEncodeError, ValueError):
        return False
    return not raw or (raw.isalnum() and raw == raw.lower())


def _decode_whole(value: Any, images: set[str], where: str) -> Whole:
    if not (isinstance(value, list) and len(value) == 6):
        raise MediaError(f"{where}: malformed content location")
    image, pack, offset, length, sha, extents = value
    if not (type(image) is str and IMAGE_ID_RE.match(image) and image in images and type(pack) is int
            and type(offset) is int and type(length) is int and min(pack, offset, length) >= 0
            and type(sha) is str and SHA256_RE.match(sha) and isinstance(extents, list)
            and all(isinstance(e, list) and len(e) == 2 and type(e[0]) is int and type(e[1]) is int
                    and e[0] >= 0 and e[1] > 0 for e in extents)
            and sum(e[1] for e in extents) == length):
        raise MediaError(f"{where}: malformed content location")
    return image, DataRef("full", [(e[0], e[1]) for e in extents], pack, offset, length, sha)


__all__ = ["DELTA_RECORDS", "STATE_INDEX", "Delta", "IndexEntry", "StateIndex", "VolumeIndex", "decode",
           "from_chain", "load", "resolve"]
