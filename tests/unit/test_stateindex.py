"""The state index (`media.stateindex`): a round trip, and every malformed index refused by `decode`."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from shadowfs.media import stateindex
from shadowfs.media.layout import MediaError
from shadowfs.media.records import DataRef, Record

IMAGE = "20261121T000000Z-00000001"
SHA = "ab" * 32


def _index() -> stateindex.StateIndex:
    index = stateindex.StateIndex()
    index.add(IMAGE, Record("put", "v", "", "dir", 0o40755, ino=2))
    index.add(IMAGE, Record("put", "v", "d", "dir", 0o40755, ino=3))
    f = Record("put", "v", "d/f", "file", 0o100644, size=5, ino=4, sha256=SHA)
    f.data = DataRef("full", [(0, 5)], 0, 0, 5, SHA)
    index.add(IMAGE, f)
    index.add(IMAGE, Record("put", "v", "d/g", "file", 0o100644, size=5, ino=4, link="d/f"))
    return index


def test_round_trip() -> None:
    index = _index()
    again = stateindex.decode(index.encode(IMAGE), IMAGE, [IMAGE])
    assert again.comparable() == index.comparable()
    volume = again.volumes["v"]
    whole = volume.whole_of(volume.entries["d/g"])  # a hard link shares its leader's content
    assert whole is not None and whole[0] == IMAGE and whole[1].extents == [(0, 5)]


def test_delete_removes_a_subtree() -> None:
    index = _index()
    index.add(IMAGE, Record("delete", "v", "d"))
    assert list(stateindex.decode(index.encode(IMAGE), IMAGE, [IMAGE]).volumes["v"].entries) == [""]


def _set(column: str, row: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["volumes"]["v"][column][row] = value
    return edit


BAD: dict[str, Callable[[dict[str, Any]], None]] = {
    "format": lambda doc: doc.update(format="other"),
    "version": lambda doc: doc.update(version=1),
    "image": lambda doc: doc.update(image="20261121T000000Z-00000002"),
    "lengths": lambda doc: doc["volumes"]["v"]["ino"].pop(),
    "missing column": lambda doc: doc["volumes"]["v"].pop("sha256"),
    "path type": _set("path", 1, 7),
    "ino type": _set("ino", 1, "3"),
    "negative ino": _set("ino", 1, -1),
    "kind": _set("kind", 2, "door"),
    "size type": _set("size", 2, 5.0),
    "digest": _set("sha256", 2, "AB" * 32),
    "digest with newline": _set("sha256", 2, SHA[:32] + "\n" + SHA[:31]),
    "whole image type": _set("whole_image", 2, "0"),
    "whole image out of range": _set("whole_image", 2, 1),
    "whole image below -1": _set("whole_image", 2, -2),
    "image outside the chain": lambda doc: doc["volumes"]["v"].update(images=["20261121T000000Z-00000009"]),
    "whole digest": _set("whole_sha256", 2, "x"),
    "whole digest upper case": _set("whole_sha256", 2, "AB" * 32),
    "extent count": _set("whole_extents", 2, 2),
    "negative extent count": _set("whole_extents", 2, -1),
    "extent type": lambda doc: doc["volumes"]["v"]["extents"].__setitem__(0, "0"),
    "missing images": lambda doc: doc["volumes"]["v"].pop("images"),
    "no root": _set("path", 0, "r"),
    "duplicate path": _set("path", 3, "d/f"),
    "unsafe path": _set("path", 3, "d/.."),
    "absolute path": _set("path", 3, "/d/g"),
    "orphan": _set("path", 3, "e/g"),
    "file as parent": _set("path", 3, "d/f/g"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_index_is_refused(case: str) -> None:
    doc = json.loads(_index().encode(IMAGE))
    bad = copy.deepcopy(doc)
    BAD[case](bad)
    with pytest.raises(MediaError):
        stateindex.decode(json.dumps(bad).encode(), IMAGE, [IMAGE])


@pytest.mark.parametrize("edit", [
    _set("whole_length", 2, 6),  # the extents do not add up to the length
    _set("whole_pack", 2, -1),
    _set("whole_offset", 2, -1),
    lambda doc: doc["volumes"]["v"]["extents"].__setitem__(1, 0),  # an empty extent
    lambda doc: doc["volumes"]["v"]["extents"].__setitem__(0, -1),
])
def test_malformed_content_location_is_refused_when_read(edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(_index().encode(IMAGE))
    edit(doc)
    volume = stateindex.decode(json.dumps(doc).encode(), IMAGE, [IMAGE]).volumes["v"]
    with pytest.raises(MediaError):
        volume.whole_of(volume.entries["d/f"])


def test_loaded_rows_are_written_again_unchanged() -> None:
    """An index loaded and encoded again (rows copied from its table), then with new puts on top."""
    index = _index()
    data = index.encode(IMAGE)
    loaded = stateindex.decode(data, IMAGE, [IMAGE])
    assert loaded.encode(IMAGE) == data
    later = "20261121T000000Z-00000002"
    g = Record("put", "v", "d/h", "file", 0o100644, size=3, ino=9, sha256="cd" * 32)
    g.data = DataRef("full", [(0, 2), (4, 1)], 1, 7, 3, "ef" * 32)
    loaded.add(later, g)
    loaded.add(later, Record("put", "v", "d/f", "file", 0o100644, size=5, ino=4, sha256=SHA,
                             data=DataRef("keep")))
    again = stateindex.decode(loaded.encode(later), later, [IMAGE, later])
    assert again.comparable() == loaded.comparable()
    volume = again.volumes["v"]
    new = volume.whole_of(volume.entries["d/h"])
    assert new is not None and new[0] == later and new[1].extents == [(0, 2), (4, 1)]
    assert new[1].sha256 == "ef" * 32
    kept = volume.whole_of(volume.entries["d/f"])
    assert kept is not None and kept[0] == IMAGE and kept[1].sha256 == SHA


LATER = "20261121T000000Z-00000002"


def test_delta_round_trip() -> None:
    doc = {"format": "shadowfs-state", "version": 2, "image": LATER, "delta_of": IMAGE, "records": 3}
    assert stateindex.decode(json.dumps(doc).encode(), LATER, [IMAGE, LATER]) == stateindex.Delta(IMAGE, 3)


@pytest.mark.parametrize("fields", [
    {"delta_of": LATER, "records": 1},  # itself
    {"delta_of": "20261121T000000Z-00000009", "records": 1},  # not in the chain
    {"delta_of": IMAGE, "records": -1},
    {"delta_of": IMAGE, "records": "1"},
    {"delta_of": IMAGE, "records": True},
    {"delta_of": 5, "records": 1},
    {"delta_of": IMAGE},
])
def test_malformed_delta_is_refused(fields: dict[str, Any]) -> None:
    doc = {"format": "shadowfs-state", "version": 2, "image": LATER, **fields}
    with pytest.raises(MediaError):
        stateindex.decode(json.dumps(doc).encode(), LATER, [IMAGE, LATER])
