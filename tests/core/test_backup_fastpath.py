"""Incremental and differential backups from the diff area's capture keys (no FUSE).

CoreSim changes a plain backing directory the way the live mount does; right
after a snapshot, the backing directory (without .shadowfs) is exactly that
snapshot, so it serves as the source tree. Chains made with the fast path must
restore exactly, must read only what changed (patches of changed ranges,
references for moved files), and must equal what the manifest-comparing
fallback makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadowfs import media
from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.manifest import differences
from shadowfs.media import layout
from shadowfs.restore.engine import restore
from shadowfs.snapshot import changes
from tests.core.simload import BLOCK, SimLoad
from tests.support.coresim import CoreSim
from tests.support.treegen import tree_manifest

HIDDEN = (".shadowfs",)



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
    full = backup(BackupRequest(store, {"v": VolumeSource(sim.backing, info={"seq": s0})}, "full"))
    sim.write("d/big", 5 * BLOCK + 10, b"changed")
    sim.write("d/big", 20 * BLOCK, b"appended")
    sim.mkdir("e")
    sim.rename("d/moved", "e/moved")
    sim.attr_change("d/small7", lambda p: os.chmod(p, 0o600))
    sim.unlink("d/small8")
    s1 = sim.snapshot("s1")
    hint = changes.scan(sim.area, s0, s1)
    inc = backup(BackupRequest(store, {"v": VolumeSource(sim.backing, changes=hint, info={"seq": s1})},
                               "incremental"))
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
    backup(BackupRequest(store, {"v": VolumeSource(sim.backing, info={"seq": s0})}, "full"))
    sim.write("f", 0, b"two")
    s1 = sim.snapshot("s1")
    sim.create("g", b"three")
    s2 = sim.snapshot("s2")
    wrong = changes.scan(sim.area, s1, s2)  # does not start at the base image's snapshot
    inc = backup(BackupRequest(store, {"v": VolumeSource(sim.backing, changes=wrong)}, "incremental"))
    paths = {r.path for r in _records(store, inc)}
    assert {"f", "g"} <= paths  # the fallback compared everything


@pytest.mark.parametrize("seed", range(5, 12))
def test_fast_chain_random(sim: CoreSim, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    load = SimLoad(sim, rng)
    load.populate(60)
    fast, slow = str(tmp_path / "fast"), str(tmp_path / "slow")
    seqs = [sim.snapshot("s0")]
    images = {fast: [backup(BackupRequest(fast, {"v": VolumeSource(sim.backing, info={"seq": seqs[0]})},
                                          "full"))],
              slow: [backup(BackupRequest(slow, {"v": VolumeSource(sim.backing)}, "full"))]}
    expected = [tree_manifest(sim.backing, HIDDEN)]
    for n, kind in enumerate(("incremental", "incremental", "incremental", "differential")):
        for _ in range(rng.randrange(10, 40)):
            load.step()
        seqs.append(sim.snapshot(f"s{n + 1}"))
        base = seqs[0] if kind == "differential" else seqs[-2]
        hint = changes.scan(sim.area, base, seqs[-1])
        images[fast].append(backup(BackupRequest(
            fast, {"v": VolumeSource(sim.backing, changes=hint, info={"seq": seqs[-1]})}, kind)))
        images[slow].append(backup(BackupRequest(slow, {"v": VolumeSource(sim.backing)}, kind)))
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


# ---- the state index -----------------------------------------------------------------------------


def _chain_with_index(sim: CoreSim, store: str) -> tuple[str, int]:
    """A full image of a small tree, its snapshot's sequence, and a change after it."""
    sim.mkdir("d")
    for i in range(20):
        sim.create(f"d/f{i}", os.urandom(2000))
    s0 = sim.snapshot("s0")
    full = backup(BackupRequest(store, {"v": VolumeSource(sim.backing, info={"seq": s0})}, "full"))
    sim.write("d/f3", 10, b"changed")
    sim.unlink("d/f4")
    return full, s0


def _incremental(sim: CoreSim, store: str, base_seq: int) -> str:
    seq = sim.snapshot(f"after-{base_seq}")
    hint = changes.scan(sim.area, base_seq, seq)
    return backup(BackupRequest(store, {"v": VolumeSource(sim.backing, changes=hint, info={"seq": seq})},
                                "incremental"))


def _assert_restores_the_backing(sim: CoreSim, store: str, image: str, out: str) -> None:
    restore(store, image, out)
    diff = differences(tree_manifest(sim.backing, HIDDEN), tree_manifest(os.path.join(out, "v")))
    assert not diff, "\n".join(diff)


def _rewrite_index(store: str, image_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change an image's state.json and its COMPLETE entry, as a consistent (malicious) writer would."""
    root = Path(store) / image_id
    doc = json.loads((root / "state.json").read_bytes())
    edit(doc)
    data = json.dumps(doc).encode()
    (root / "state.json").write_bytes(data)
    complete = json.loads((root / "COMPLETE").read_bytes())
    files = complete["files"]
    files["state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / "COMPLETE").write_bytes(layout.complete_document(image_id, files))


def test_fast_incremental_reads_the_index_not_the_manifests(sim: CoreSim, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "media")
    full, s0 = _chain_with_index(sim, store)

    def no_fold(*args: object) -> None:
        raise AssertionError("the fast path folded the chain's manifests")

    monkeypatch.setattr("shadowfs.backup.engine.fold_chain", no_fold)
    inc = _incremental(sim, store, s0)
    monkeypatch.undo()
    ops = {(r.op, r.path) for r in _records(store, inc)}
    assert ops == {("put", "d"), ("put", "d/f3"), ("delete", "d/f4")}
    assert media.verify(store) == []  # verify checks every index against the folded manifests
    _assert_restores_the_backing(sim, store, inc, str(tmp_path / "out"))


def test_damaged_index_is_reported_and_the_backup_folds_instead(sim: CoreSim, tmp_path: Path) -> None:
    store = str(tmp_path / "media")
    full, s0 = _chain_with_index(sim, store)
    index = Path(store) / full / "state.json"
    sound = index.read_bytes()
    raw = bytearray(sound)
    raw[len(raw) // 2] ^= 0x01
    index.write_bytes(bytes(raw))
    assert any("state.json" in str(p) for p in media.verify(store, full))
    inc = _incremental(sim, store, s0)
    with pytest.raises(media.MediaError, match="state.json"):
        restore(store, inc, str(tmp_path / "refused"))  # damaged media is refused, whichever file
    index.write_bytes(sound)
    assert media.verify(store) == []
    _assert_restores_the_backing(sim, store, inc, str(tmp_path / "out"))


def test_index_that_disagrees_with_the_manifests_is_reported(sim: CoreSim, tmp_path: Path) -> None:
    store = str(tmp_path / "media")
    full, _ = _chain_with_index(sim, store)

    def grow(doc: dict[str, Any]) -> None:
        doc["volumes"]["v"]["size"][1] += 1

    _rewrite_index(store, full, grow)
    problems = [str(p) for p in media.verify(store, full)]
    assert problems == [f"image {full}: state.json disagrees with the manifests of its chain"]


@pytest.mark.parametrize("bad_path", ["../outside", "/etc", "d/../../x", "a//b", "d/..", "nowhere/f"])
def test_index_with_an_unsafe_path_is_not_used(sim: CoreSim, tmp_path: Path, bad_path: str) -> None:
    store = str(tmp_path / "media")
    full, s0 = _chain_with_index(sim, store)

    def plant(doc: dict[str, Any]) -> None:
        columns = doc["volumes"]["v"]
        columns["path"].append(bad_path)
        for name, value in (("ino", 999999), ("kind", "file"), ("size", 0), ("sha256", None),
                            ("whole_image", -1), ("whole_pack", 0), ("whole_offset", 0), ("whole_length", 0),
                            ("whole_sha256", None), ("whole_extents", 0)):
            columns[name].append(value)

    root = Path(store) / full
    sound = {name: (root / name).read_bytes() for name in ("state.json", "COMPLETE")}
    _rewrite_index(store, full, plant)
    assert media.verify(store, full) != []
    inc = _incremental(sim, store, s0)
    assert all(r.path != bad_path for r in _records(store, inc))
    with pytest.raises(media.MediaError, match="state.json"):
        restore(store, inc, str(tmp_path / "refused"))
    for name, data in sound.items():
        (root / name).write_bytes(data)
    _assert_restores_the_backing(sim, store, inc, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["v"]


# ---- delta state indexes -----------------------------------------------------------------------


def _index_doc(store: str, image: str) -> dict[str, Any]:
    return json.loads((Path(store) / image / "state.json").read_bytes())


def _seq_of(store: str, image: str) -> int:
    return int(media.open_image(store, image).info.volumes[0]["seq"])


def test_small_incrementals_keep_a_delta_and_the_next_one_loads_it(sim: CoreSim, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "media")
    full, s0 = _chain_with_index(sim, store)
    first = _incremental(sim, store, s0)
    sim.create("d/new", b"new file")
    second = _incremental(sim, store, _seq_of(store, first))
    counts = [len(_records(store, image)) for image in (first, second)]
    assert _index_doc(store, first) == {"format": "shadowfs-state", "version": 2, "image": first,
                                        "delta_of": full, "records": counts[0]}
    assert _index_doc(store, second)["delta_of"] == full
    assert _index_doc(store, second)["records"] == sum(counts)
    assert media.verify(store) == []  # each delta resolved and compared with the folded manifests

    def no_fold(*args: object) -> None:
        raise AssertionError("the fast path folded the chain's manifests")

    monkeypatch.setattr("shadowfs.backup.engine.fold_chain", no_fold)
    sim.write("d/f5", 0, b"third")
    third = _incremental(sim, store, _seq_of(store, second))
    monkeypatch.undo()
    assert {(r.op, r.path) for r in _records(store, third)} == {("put", "d/f5")}
    _assert_restores_the_backing(sim, store, third, str(tmp_path / "out"))


def test_a_full_index_is_written_again_once_a_delta_would_grow(sim: CoreSim, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "media")
    monkeypatch.setattr("shadowfs.media.stateindex.DELTA_RECORDS", 3)
    full, s0 = _chain_with_index(sim, store)
    first = _incremental(sim, store, s0)  # put d, put d/f3, delete d/f4: 3 records
    assert _index_doc(store, first)["delta_of"] == full
    sim.write("d/f6", 0, b"more")
    second = _incremental(sim, store, _seq_of(store, first))  # 5 records since the full index
    assert "volumes" in _index_doc(store, second) and "delta_of" not in _index_doc(store, second)
    sim.write("d/f7", 0, b"more")
    third = _incremental(sim, store, _seq_of(store, second))
    assert _index_doc(store, third)["delta_of"] == second
    assert media.verify(store) == []
    _assert_restores_the_backing(sim, store, third, str(tmp_path / "out"))


@pytest.mark.parametrize("edit", ["outside the chain", "records", "delta of a delta"])
def test_a_bad_delta_is_reported_and_the_backup_folds_instead(sim: CoreSim, tmp_path: Path,
                                                              edit: str) -> None:
    store = str(tmp_path / "media")
    full, s0 = _chain_with_index(sim, store)
    first = _incremental(sim, store, s0)
    sim.create("d/new", b"new")
    second = _incremental(sim, store, _seq_of(store, first))

    def change(doc: dict[str, Any]) -> None:
        if edit == "outside the chain":
            doc["delta_of"] = "20261121T000000Z-00000009"
        elif edit == "records":
            doc["records"] += 1
        else:
            doc["delta_of"] = first

    root = Path(store) / second
    sound = {name: (root / name).read_bytes() for name in ("state.json", "COMPLETE")}
    _rewrite_index(store, second, change)
    assert [p.image for p in media.verify(store, second)] == [second]
    sim.write("d/f8", 0, b"after")
    third = _incremental(sim, store, _seq_of(store, second))  # the chain is folded: still right
    assert {(r.op, r.path) for r in _records(store, third)} == {("put", "d/f8")}
    with pytest.raises(media.MediaError, match="state.json"):
        restore(store, third, str(tmp_path / "refused"))  # damaged media is refused, whichever file
    for name, data in sound.items():
        (root / name).write_bytes(data)
    _assert_restores_the_backing(sim, store, third, str(tmp_path / "out"))
