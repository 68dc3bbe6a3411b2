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
    "version": lambda doc: doc.update(version=2),
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
    "whole type": _set("whole", 2, {"image": IMAGE}),
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


@pytest.mark.parametrize("whole", [
    ["20261121T000000Z-00000009", 0, 0, 5, SHA, [[0, 5]]],  # an image outside the chain
    [IMAGE, 0, 0, 6, SHA, [[0, 5]]],  # extents do not add up to the length
    [IMAGE, -1, 0, 5, SHA, [[0, 5]]],
    [IMAGE, 0, 0, 5, "x", [[0, 5]]],
    [IMAGE, 0, 0, 5, SHA],
])
def test_malformed_content_location_is_refused_when_read(whole: list[Any]) -> None:
    doc = json.loads(_index().encode(IMAGE))
    doc["volumes"]["v"]["whole"][2] = whole
    volume = stateindex.decode(json.dumps(doc).encode(), IMAGE, [IMAGE]).volumes["v"]
    with pytest.raises(MediaError):
        volume.whole_of(volume.entries["d/f"])
