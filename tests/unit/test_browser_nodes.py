"""Snapshot-browser node ids (volume index, snapshot sequence, inode) and set creation times."""

from __future__ import annotations

import calendar
import errno

import pytest

from shadowfs.browser.nodes import snapshot_node, split_snapshot_node
from shadowfs.browser.volumes import parse_created


def test_node_ids_and_times() -> None:
    assert snapshot_node(1, 2, 3) == (1 << 52) | (2 << 32) | 3
    assert split_snapshot_node(snapshot_node(4095, (1 << 20) - 1, (1 << 32) - 1)) == (
        4095, (1 << 20) - 1, (1 << 32) - 1)
    for index, seq, ino in [(0, 1, 1), (4096, 1, 1), (1, 1 << 20, 1), (1, 1, 1 << 32), (1, 1, 0)]:
        with pytest.raises(OSError) as exc:
            snapshot_node(index, seq, ino)
        assert exc.value.errno == errno.EOVERFLOW
    assert parse_created("2026-11-21T20:43:52Z") == (
        "2026-11-21T20:43:52Z", calendar.timegm((2026, 11, 21, 20, 43, 52)) * 10**9)
    assert parse_created("2026-11-21T21:43:52.5+01:00")[0] == "2026-11-21T20:43:52Z"
    assert parse_created("not/a time") == ("not_a time", 0)
