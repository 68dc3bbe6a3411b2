"""Capture by runs: consecutive blocks go to the block store in one copy, holes and what
lies past the live end are zero blocks without bytes, and every snapshot read is exact."""

from __future__ import annotations

import os

from shadowfs.diffarea import schema
from shadowfs.diffarea.schema import BLOCK_SIZE
from tests.support.coresim import CoreSim, manifest_live, manifest_view


def _refs(sim: CoreSim, rel: str, seq: int) -> dict[int, schema.BlockRef]:
    with sim.area.read() as txn:
        return sim.area.block_refs(txn, sim._ino(rel), range(64), seq)


def test_run_is_one_contiguous_extent(sim: CoreSim) -> None:
    data = os.urandom(10 * BLOCK_SIZE + 123)
    sim.create("f", data)
    seq = sim.snapshot("s")
    sim.write("f", 0, b"x" * len(data))  # one write over every block: one run
    refs = _refs(sim, "f", seq)
    assert sorted(refs) == list(range(11))
    offsets = [refs[block].offset for block in range(11)]
    assert all(offset is not None for offset in offsets)
    first = offsets[0]
    assert first is not None
    assert offsets == [first + block * BLOCK_SIZE for block in range(11)]
    assert refs[10].length == 123
    assert sim.view(seq).read(sim._ino("f"), 0, len(data), len(data)) == data


def test_holes_are_zero_blocks_without_bytes(sim: CoreSim) -> None:
    sim.create("sparse")
    path = os.path.join(sim.backing, "sparse")
    with open(path, "r+b") as f:
        f.seek(3 * BLOCK_SIZE)
        f.write(b"d" * BLOCK_SIZE)  # block 3 holds data, 0-2 and 4-7 are holes
        f.truncate(8 * BLOCK_SIZE)
    seq = sim.snapshot("s")
    before = manifest_live(sim.backing)
    used_before = sim.area.blocks.disk_bytes()
    sim.write("sparse", 0, b"w" * 8 * BLOCK_SIZE)
    refs = _refs(sim, "sparse", seq)
    assert sorted(refs) == list(range(8))
    assert [block for block, ref in refs.items() if ref.offset is not None] == [3]
    assert sim.area.blocks.disk_bytes() - used_before <= 2 * BLOCK_SIZE
    assert manifest_view(sim.view(seq)) == before


def test_live_file_shorter_than_the_image_reads_zeros_beyond(sim: CoreSim) -> None:
    data = os.urandom(4 * BLOCK_SIZE)
    sim.create("f", data)
    seq = sim.snapshot("s")
    sim.truncate("f", BLOCK_SIZE // 2)  # captures blocks 0-3 first
    sim.write("f", 0, b"z" * 100)
    view = sim.view(seq)
    assert view.read(sim._ino("f"), 0, len(data), len(data)) == data


def test_pre_image_taken_after_the_file_was_cut_is_padded(sim: CoreSim) -> None:
    # The engine is asked for blocks up to the size at the snapshot while the live file is
    # shorter (a truncation outside the mount is a lapse; here we drive the engine directly).
    data = os.urandom(3 * BLOCK_SIZE)
    sim.create("f", data)
    seq = sim.snapshot("s")
    ino = sim._ino("f")
    with sim.area.write() as txn:
        sim.engine.attrs(txn, schema.Seq(seq), ino)
    os.truncate(os.path.join(sim.backing, "f"), BLOCK_SIZE + 10)
    with sim.area.write() as txn:
        sim.engine.for_write(txn, schema.Seq(seq), ino, 0, 3 * BLOCK_SIZE)
    got = sim.view(seq).read(ino, 0, len(data), len(data))
    assert got == data[:BLOCK_SIZE + 10] + bytes(2 * BLOCK_SIZE - 10)
