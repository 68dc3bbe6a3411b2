"""Capture ahead of a writer in two steps (copied first, stored by a later commit): a copy is
stored only where the block still has no pre-image, so a change that came between keeps its
own pre-image, and copies not stored are freed."""

from __future__ import annotations

import os

from shadowfs.diffarea.schema import BLOCK_SIZE, Seq
from tests.support.coresim import CoreSim


def _freed(sim: CoreSim) -> int:
    with sim.area.read() as txn:
        return sum(1 for _ in txn.cursor(db=sim.area.freed))


def test_a_change_between_copy_and_commit_keeps_its_own_pre_image(sim: CoreSim) -> None:
    original = os.urandom(8 * BLOCK_SIZE)
    sim.create("f", original)
    seq = Seq(sim.snapshot("s"))
    ino = sim._ino("f")
    sim.write("f", 0, b"w" * 10)  # the first write: attributes and block 0 captured
    copied = sim.engine.copy_ahead(seq, ino, BLOCK_SIZE, 7 * BLOCK_SIZE)
    assert sorted(copied.refs) == list(range(1, 8))
    sim.write("f", 3 * BLOCK_SIZE, b"X" * 100)  # block 3 captured and changed before the commit
    with sim.area.write() as txn:
        sim.engine.for_write_copied(txn, seq, ino, BLOCK_SIZE, 7 * BLOCK_SIZE, copied)
    assert sim.view(seq).read(ino, 0, len(original), len(original)) == original
    assert _freed(sim) == 1  # the copy of block 3 was not stored


def test_copies_for_an_older_snapshot_are_discarded(sim: CoreSim) -> None:
    original = os.urandom(4 * BLOCK_SIZE)
    sim.create("f", original)
    first = Seq(sim.snapshot("s1"))
    ino = sim._ino("f")
    sim.write("f", 0, b"a")
    fd = os.open(os.path.join(sim.backing, "f"), os.O_RDONLY)
    try:
        ahead = sim.planner.ahead(first, ino, fd, BLOCK_SIZE, 3 * BLOCK_SIZE)
    finally:
        os.close(fd)
    assert ahead is not None
    copied = ahead.copy()
    second = Seq(sim.snapshot("s2"))
    sim.committer.run(ahead.job(copied))
    with sim.area.read() as txn:
        assert sim.area.block_refs(txn, ino, range(1, 4), first) == {}
    assert _freed(sim) == 3
    assert sim.view(first).read(ino, 0, len(original), len(original)) == original
    assert second > first


def test_holes_and_blocks_past_the_live_end(sim: CoreSim) -> None:
    sim.create("sparse")
    path = os.path.join(sim.backing, "sparse")
    with open(path, "r+b") as f:
        f.seek(2 * BLOCK_SIZE)
        f.write(b"d" * BLOCK_SIZE)
        f.truncate(6 * BLOCK_SIZE)
    seq = Seq(sim.snapshot("s"))
    ino = sim._ino("sparse")
    sim.write("sparse", 0, b"w")
    copied = sim.engine.copy_ahead(seq, ino, BLOCK_SIZE, 5 * BLOCK_SIZE)
    assert sorted(copied.refs) == [2] and copied.holes == {1, 3, 4, 5}
    with sim.area.write() as txn:
        sim.engine.for_write_copied(txn, seq, ino, BLOCK_SIZE, 5 * BLOCK_SIZE, copied)
        refs = sim.area.block_refs(txn, ino, range(6), seq)
    assert [b for b, r in sorted(refs.items()) if r.offset is None] == [0, 1, 3, 4, 5]  # 0: the first write
    expected = bytes(2 * BLOCK_SIZE) + b"d" * BLOCK_SIZE + bytes(3 * BLOCK_SIZE)
    assert sim.view(seq).read(ino, 0, 6 * BLOCK_SIZE, 6 * BLOCK_SIZE) == expected
