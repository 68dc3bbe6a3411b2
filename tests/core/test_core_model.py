"""The capture, read and delete rules without FUSE: a seeded random workload on a
plain directory, changed the way the live mount changes it, with every snapshot
compared against a manifest taken at its instant."""

from __future__ import annotations

import os
import random

import pytest

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea
from tests.support.coresim import CoreSim, manifest_live, manifest_view


def test_overwrite_append_truncate(sim: CoreSim) -> None:
    sim.create("f", b"a" * 200_000)
    first = sim.snapshot("s1")
    before = manifest_live(sim.backing)
    sim.write("f", 70_000, b"b" * 10)
    sim.write("f", 200_000, b"c" * 50_000)  # append
    sim.truncate("f", 1000)
    sim.truncate("f", 500_000)
    assert manifest_view(sim.view(first)) == before
    with sim.area.read() as txn:
        keys = [k for k, _ in txn.cursor(db=sim.area.preimages)]
    blocks = sorted(schema.block_number(k[:-8]) for k in keys if k[:1] == b"B")
    # block 1 by the overwrite, blocks 0..3 by the truncation (all the file had); never beyond
    assert blocks == [0, 1, 2, 3]


def test_append_only_captures_no_block(sim: CoreSim) -> None:
    sim.create("log", b"x" * schema.BLOCK_SIZE)
    seq = sim.snapshot("s")
    for _ in range(10):
        sim.write("log", os.path.getsize(os.path.join(sim.backing, "log")), b"y" * 5000)
    with sim.area.read() as txn:
        kinds = [k[:1] for k, _ in txn.cursor(db=sim.area.preimages)]
    assert kinds == [b"A"]
    assert sim.view(seq).read(sim._ino("log"), 0, 10**6, schema.BLOCK_SIZE) == b"x" * schema.BLOCK_SIZE


def test_unlinked_and_renamed_kept(sim: CoreSim) -> None:
    sim.mkdir("d")
    sim.create("d/f", b"hello")
    sim.create("g", b"world")
    seq = sim.snapshot("s")
    before = manifest_live(sim.backing)
    sim.rename("d", "e")
    sim.unlink("g")
    sim.write("e/f", 0, b"HELLO")
    sim.rename("e/f", "h")
    sim.rmdir("e")
    assert manifest_view(sim.view(seq)) == before
    sim.delete(seq)
    assert os.listdir(os.path.join(sim.backing, ".shadowfs", "graveyard")) == []


def test_new_objects_cost_nothing(sim: CoreSim) -> None:
    sim.snapshot("s")
    sim.mkdir("new")
    with sim.area.read() as txn:
        before = sim.area.used_bytes(txn)
    for i in range(20):
        sim.create(f"new/f{i}", b"z" * 1000)
        sim.write(f"new/f{i}", 0, b"q" * 100)
    with sim.area.read() as txn:
        after = sim.area.used_bytes(txn)
    # only the 20 NONEXISTENT markers of the new files
    assert after - before == 20 * (1 + 8 + 8 + 1)


def _random_workload(sim: CoreSim, rng: random.Random, steps: int, manifests: dict[int, dict],
                     snap_every: int) -> None:
    files: list[str] = []
    dirs: list[str] = [""]
    counter = 0

    def fresh(parent: str) -> str:
        nonlocal counter
        counter += 1
        return os.path.join(parent, f"n{counter}")

    def refresh() -> None:
        files.clear()
        dirs[:] = [""]
        for top, dnames, fnames in os.walk(sim.backing):
            rel = os.path.relpath(top, sim.backing)
            rel = "" if rel == "." else rel
            if rel.startswith(".shadowfs"):
                dnames.clear()
                continue
            for d in dnames:
                if not (rel == "" and d == ".shadowfs"):
                    dirs.append(os.path.join(rel, d))
            for f in fnames:
                p = os.path.join(rel, f)
                if os.path.isfile(os.path.join(sim.backing, p)) and not os.path.islink(
                        os.path.join(sim.backing, p)):
                    files.append(p)

    for step in range(steps):
        refresh()
        op = rng.choice(["create", "write", "write", "append", "truncate", "unlink", "mkdir",
                         "rmdir", "rename", "rename_dir", "link", "symlink", "fifo", "chmod",
                         "xattr", "utime"])
        try:
            if op == "create" or not files and op in ("write", "append", "truncate", "unlink",
                                                       "link", "chmod", "xattr", "utime"):
                sim.create(fresh(rng.choice(dirs)), rng.randbytes(rng.randrange(0, 300_000)))
            elif op == "write":
                f = rng.choice(files)
                size = os.path.getsize(os.path.join(sim.backing, f))
                sim.write(f, rng.randrange(0, size + 1), rng.randbytes(rng.randrange(1, 150_000)))
            elif op == "append":
                f = rng.choice(files)
                sim.write(f, os.path.getsize(os.path.join(sim.backing, f)), rng.randbytes(5000))
            elif op == "truncate":
                sim.truncate(rng.choice(files), rng.randrange(0, 400_000))
            elif op == "unlink":
                sim.unlink(rng.choice(files))
            elif op == "mkdir":
                sim.mkdir(fresh(rng.choice(dirs)))
            elif op == "rmdir" and len(dirs) > 1:
                sim.rmdir(rng.choice(dirs[1:]))
            elif op == "rename" and files:
                target = rng.choice(files) if rng.random() < 0.3 else fresh(rng.choice(dirs))
                sim.rename(rng.choice(files), target)
            elif op == "rename_dir" and len(dirs) > 1:
                src = rng.choice(dirs[1:])
                parent = rng.choice(dirs)
                if parent == src or parent.startswith(src + "/"):
                    continue
                sim.rename(src, fresh(parent))
            elif op == "link":
                sim.link(rng.choice(files), fresh(rng.choice(dirs)))
            elif op == "symlink":
                sim.symlink(f"target-{step}", fresh(rng.choice(dirs)))
            elif op == "fifo":
                sim.mkfifo(fresh(rng.choice(dirs)))
            elif op == "chmod":
                mode = rng.choice([0o600, 0o644, 0o755, 0o400])
                sim.attr_change(rng.choice(files), lambda p, m=mode: os.chmod(p, m))
            elif op == "xattr":
                value = rng.randbytes(20)
                sim.attr_change(rng.choice(files + dirs[1:] or files),
                                lambda p, v=value: os.setxattr(p, b"user.k", v, follow_symlinks=False))
            elif op == "utime":
                t = rng.randrange(10**9, 2 * 10**9) * 10**9
                sim.attr_change(rng.choice(files), lambda p, t=t: os.utime(p, ns=(t, t)))
        except OSError as exc:
            if exc.errno not in (39,):  # ENOTEMPTY from rmdir / rename over a dir
                raise
        if step % snap_every == snap_every - 1:
            seq = sim.snapshot(f"s{step}")
            manifests[seq] = manifest_live(sim.backing)
            if len(manifests) > 3 and rng.random() < 0.4:
                victim = rng.choice(sorted(manifests))
                sim.delete(victim)
                del manifests[victim]


def _check_one_preimage_per_interval(sim: CoreSim) -> None:
    """Design §3.3: at most one pre-image per object between two remaining snapshots,
    and none older than the oldest remaining one."""
    with sim.area.read() as txn:
        seqs = [record.seq for record in sim.area.snapshot_list(txn)]
        seen: set[tuple[bytes, int]] = set()
        for key, _ in txn.cursor(db=sim.area.preimages):
            obj, seq = schema.split_preimage_key(key)
            assert seqs and seq >= seqs[0], "pre-image older than every snapshot"
            interval = max(s for s in seqs if s <= seq)
            assert (obj, interval) not in seen, "two pre-images in one interval"
            seen.add((obj, interval))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_workload(sim: CoreSim, seed: int) -> None:
    rng = random.Random(seed)
    manifests: dict[int, dict] = {}
    _random_workload(sim, rng, 600, manifests, snap_every=25)
    for seq, expected in manifests.items():
        got = manifest_view(sim.view(seq))
        assert got == expected, f"snapshot {seq} differs"
    # delete everything that is left, in random order: the diff area and graveyard empty out
    for seq in rng.sample(sorted(manifests), len(manifests)):
        sim.delete(seq)
        del manifests[seq]
        _check_one_preimage_per_interval(sim)
        for other, expected in manifests.items():
            assert manifest_view(sim.view(other)) == expected
    with sim.area.read() as txn:
        assert sim.area.used_bytes(txn) == 0
        assert list(txn.cursor(db=sim.area.preimages)) == []
        assert list(txn.cursor(db=sim.area.freed)) == []
    assert sim.area.blocks.disk_bytes() == 0, "freed extents of blocks.dat were not punched out"
    assert os.listdir(os.path.join(sim.backing, ".shadowfs", "graveyard")) == []


def test_format_version_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    area = DiffArea.open(str(tmp_path / "d"), volume="v")
    with area.write() as txn:
        txn.put(schema.META_FORMAT, schema.u32(99), db=area.meta)
    area.close()
    with pytest.raises(Exception, match="format 99"):
        DiffArea.open(str(tmp_path / "d"))
