"""What the browser's reads by inode remember (`browser.files.InodeFiles`): sizes per node, the
most recently used ones, and only for the volume object they were read from."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.browser.files import InodeFiles, Known
from shadowfs.browser.nodes import NodeId, snapshot_node
from shadowfs.browser.volumes import BrowserVolume


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[tuple[BrowserVolume, BrowserVolume]]:
    first = BrowserVolume("data", 1, str(tmp_path), os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    again = BrowserVolume("data", 1, str(tmp_path), os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    try:
        yield first, again
    finally:
        first.close()
        again.close()


Volumes = tuple[BrowserVolume, BrowserVolume]


def test_known_sizes_are_bounded_and_belong_to_one_volume(volumes: Volumes) -> None:
    volume, replacement = volumes
    table = InodeFiles(capacity=3)
    nodes = [NodeId(snapshot_node(1, 2, ino)) for ino in range(10, 15)]
    for size, node in enumerate(nodes[:3]):
        table.put(node, Known(volume, size))
    assert table.get(nodes[0], volume) == Known(volume, 0)  # now the most recently used
    table.put(nodes[3], Known(volume, 3, captured=True))  # evicts nodes[1], the least recent
    assert len(table) == 3
    assert table.get(nodes[1], volume) is None
    assert table.get(nodes[0], volume) == Known(volume, 0)
    assert table.get(nodes[3], volume) == Known(volume, 3, captured=True)
    # the same node id of a volume replaced since (same index, another diff area) misses
    assert table.get(nodes[2], replacement) is None
