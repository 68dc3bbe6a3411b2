"""Incremental and differential backups from the diff area's capture keys (no FUSE).

CoreSim changes a plain backing directory the way the live mount does; right
after a snapshot, the backing directory (without .shadowfs) is exactly that
snapshot, so it serves as the source tree. Chains made with the fast path must
restore exactly, must read only what changed (patches of changed ranges,
references for moved files), and must equal what the manifest-comparing
fallback makes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from shadowfs import changes, media
from shadowfs.backup import backup
from shadowfs.manifest import differences
from shadowfs.restore import restore
from tests.coresim import CoreSim
from tests.simload import BLOCK, SimLoad
from tests.treegen import tree_manifest

HIDDEN = (".shadowfs",)


@pytest.fixture
def sim(tmp_path: Path):  # type: ignore[no-untyped-def]
    backing = tmp_path / "backing"
    backing.mkdir()
    core = CoreSim(str(backing), str(tmp_path / "diffarea"))
    yield core
    core.close()


def _records(store: str, image: str) -> list[media.Record]:
    return list(media.open_image(store, image).records())


def test_fast_incremental_reads_only_changes(sim: CoreSim, tmp_path: Path) -> None:
    store = str(tmp_path / "media")
    sim.mkdir("d")
    sim.create("d/big", os.urandom(20 * BLOCK))
    sim.create("d/moved", os.urandom(3 * BLOCK))
    for i in range(50):
        sim.create(f"d/small{i}", os.urandom(1000))
    s0 = sim.snapshot("s0")
    full = backup({"v": sim.backing}, store, "full", volume_info={"v": {"seq": s0}})
    sim.write("d/big", 5 * BLOCK + 10, b"changed")
    sim.write("d/big", 20 * BLOCK, b"appended")
    sim.mkdir("e")
    sim.rename("d/moved", "e/moved")
    sim.attr_change("d/small7", lambda p: os.chmod(p, 0o600))
    sim.unlink("d/small8")
    s1 = sim.snapshot("s1")
    hint = changes.scan(sim.area, s0, s1)
    inc = backup({"v": sim.backing}, store, "incremental", changed_hint={"v": hint},
                 volume_info={"v": {"seq": s1}})
    by_path = {r.path: r for r in _records(store, inc)}
    assert by_path["d/big"].data is not None and by_path["d/big"].data.how == "patch"
    assert by_path["d/big"].data.extents == [(5 * BLOCK, BLOCK), (20 * BLOCK, 8)]
    assert by_path["e/moved"].data is not None and by_path["e/moved"].data.how == "ref"
    assert by_path["e/moved"].data.image == full
    assert by_path["d/small7"].data is not None and by_path["d/small7"].data.how == "keep"
    assert by_path["d/small8"].op == "delete" and by_path["d/moved"].op == "delete"
    assert "d/small9" not in by_path
    assert media.open_image(store, inc).info.stats["bytes"] == BLOCK + 8
    expected = tree_manifest(sim.backing, HIDDEN)
    restore(store, inc, str(tmp_path / "out"))
    diff = differences(expected, tree_manifest(str(tmp_path / "out" / "v")))
    assert not diff, "\n".join(diff)


def test_hint_for_another_base_is_ignored(sim: CoreSim, tmp_path: Path) -> None:
    store = str(tmp_path / "media")
    sim.create("f", b"one")
    s0 = sim.snapshot("s0")
    backup({"v": sim.backing}, store, "full", volume_info={"v": {"seq": s0}})
    sim.write("f", 0, b"two")
    s1 = sim.snapshot("s1")
    sim.create("g", b"three")
    s2 = sim.snapshot("s2")
    wrong = changes.scan(sim.area, s1, s2)  # does not start at the base image's snapshot
    inc = backup({"v": sim.backing}, store, "incremental", changed_hint={"v": wrong})
    paths = {r.path for r in _records(store, inc)}
    assert {"f", "g"} <= paths  # the fallback compared everything


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_fast_chain_random(sim: CoreSim, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    load = SimLoad(sim, rng)
    load.populate(60)
    fast, slow = str(tmp_path / "fast"), str(tmp_path / "slow")
    seqs = [sim.snapshot("s0")]
    images = {fast: [backup({"v": sim.backing}, fast, "full", volume_info={"v": {"seq": seqs[0]}})],
              slow: [backup({"v": sim.backing}, slow, "full")]}
    expected = [tree_manifest(sim.backing, HIDDEN)]
    for n, kind in enumerate(("incremental", "incremental", "incremental", "differential")):
        for _ in range(rng.randrange(10, 40)):
            load.step()
        seqs.append(sim.snapshot(f"s{n + 1}"))
        base = seqs[0] if kind == "differential" else seqs[-2]
        hint = changes.scan(sim.area, base, seqs[-1])
        images[fast].append(backup({"v": sim.backing}, fast, kind, changed_hint={"v": hint},
                                   volume_info={"v": {"seq": seqs[-1]}}))
        images[slow].append(backup({"v": sim.backing}, slow, kind))
        expected.append(tree_manifest(sim.backing, HIDDEN))
    assert media.verify(fast) == [] and media.verify(slow) == []
    for store in (fast, slow):
        for n, image in enumerate(images[store]):
            out = str(tmp_path / f"out-{os.path.basename(store)}-{n}")
            restore(store, image, out)
            diff = differences(expected[n], tree_manifest(os.path.join(out, "v")))
            assert not diff, f"{store} image {n}:\n" + "\n".join(diff)
    for fast_image, slow_image in zip(images[fast][1:], images[slow][1:], strict=True):
        fast_ops = {(r.op, r.path) for r in _records(fast, fast_image)}
        slow_ops = {(r.op, r.path) for r in _records(slow, slow_image)}
        puts = {op for op in fast_ops if op[0] == "put"}
        assert puts == {op for op in slow_ops if op[0] == "put"}  # same decisions, without comparing all
        # the fast path also deletes a path whose object was replaced by another (and puts it again)
        assert {op for op in fast_ops - slow_ops if op[0] == "delete"} <= {("delete", p) for _, p in puts}
