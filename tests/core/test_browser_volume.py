"""The pieces that make the snapshot browser's worker threads safe, without a mount: borrowed
descriptors of `LiveObjects`, the cursor walk of `block_refs_range`, `read_blocks_into`, and a
volume whose close waits for its pinned users."""

from __future__ import annotations

import errno
import os
import random

import lmdb
import pytest

from shadowfs.browser.volumes import BrowserVolume
from shadowfs.diffarea.schema import BLOCK_SIZE
from shadowfs.snapshot.view import LiveObjects
from tests.support.coresim import CoreSim


def test_borrowed_descriptors_outlive_eviction_and_close(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "root")
    os.makedirs(root)
    inos = []
    for number in range(6):
        name = os.path.join(root, f"f{number}")
        with open(name, "wb") as f:
            f.write(b"%d" % number)
        inos.append(os.stat(name).st_ino)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    live = LiveObjects(root_fd, capacity=2)
    try:
        with live.borrow(inos[0], os.O_RDONLY) as first:
            for ino in inos[1:]:  # evicts everything not borrowed
                with live.borrow(ino, os.O_RDONLY) as fd:
                    assert os.pread(fd, 1, 0)
            assert os.pread(first, 1, 0) == b"0"  # never closed while borrowed
            live.close()
            assert os.pread(first, 1, 0) == b"0"  # closed only when given back
        with pytest.raises(OSError):
            os.fstat(first)
    finally:
        os.close(root_fd)


def test_block_refs_range_matches_block_by_block(tmp_path: os.PathLike[str]) -> None:
    sim = CoreSim(os.path.join(tmp_path, "backing"), os.path.join(tmp_path, "area"))
    try:
        rng = random.Random(3)
        data = rng.randbytes(40 * BLOCK_SIZE)
        with open(os.path.join(sim.backing, "f"), "wb") as f:
            f.write(data)
        ino = os.stat(os.path.join(sim.backing, "f")).st_ino
        seqs = []
        for round_ in range(4):
            seqs.append(sim.snapshot(f"s{round_}"))
            for _ in range(8):
                sim.write("f", rng.randrange(40) * BLOCK_SIZE, bytes([round_]) * 100)
        sim.delete(seqs[1])
        area = sim.area
        for seq in seqs:
            with area.read() as txn:
                expected = area.block_refs(txn, ino, range(40), seq)
                assert area.block_refs_range(txn, ino, 0, 40, seq) == expected
                assert area.block_refs_range(txn, ino, 5, 17, seq) == {
                    block: ref for block, ref in expected.items() if 5 <= block < 17}
            if not expected:
                continue
            out = bytearray(40 * BLOCK_SIZE)
            area.read_blocks_into(expected, memoryview(out)[BLOCK_SIZE // 2:], BLOCK_SIZE // 2)
            images = area.read_blocks(expected)
            for block, image in images.items():
                start = block * BLOCK_SIZE
                low = max(start, BLOCK_SIZE // 2)
                assert out[low:start + len(image)] == image[low - start:]
    finally:
        sim.close()


def test_volume_closes_only_when_its_last_pin_is_gone(tmp_path: os.PathLike[str]) -> None:
    sim = CoreSim(os.path.join(tmp_path, "backing"), os.path.join(tmp_path, "area"))
    sim.snapshot("s")
    sim.close()  # one environment per process: the volume's own
    volume = BrowserVolume("v", 1, os.path.join(tmp_path, "area"),
                           os.open(os.path.join(tmp_path, "backing"), os.O_RDONLY | os.O_DIRECTORY))
    area = volume.ensure_area()
    assert area is not None
    view = volume.view(1)
    volume.pin()
    volume.close()
    with pytest.raises(OSError) as exc:
        volume.view(1)  # no new users
    assert exc.value.errno == errno.ESTALE
    assert view.attr(view.root_ino).is_dir  # a running user still has everything open
    volume.unpin()
    with pytest.raises(lmdb.Error):
        area.env.begin()
