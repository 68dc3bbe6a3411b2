"""changes.py and snapdiff.py against a brute-force comparison of two whole snapshots.

Seeded random workloads run through CoreSim (the capture engine on a plain
directory, no FUSE); snapshots are taken in between and some deleted. For
every pair of remaining snapshots, the diff derived from the diff area's
capture keys must equal, item for item, the diff of two complete manifests
(every path, every attribute, every 64 KiB block of every file), and the
candidate scan must never have read anything outside [base, new).
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from typing import Any

import pytest

from shadowfs.diffarea.schema import BLOCK_SIZE, KIND_OF_FMT
from shadowfs.snapshot import changes as ch
from shadowfs.snapshot.diff import diff_snapshots
from shadowfs.snapshot.readers import ViewReader, ViewSource
from shadowfs.snapshot.tree import SparseReader
from shadowfs.snapshot.view import SnapshotView
from tests.core.simload import SimLoad
from tests.support.coresim import CoreSim, Entry, manifest_view

# ---- the brute-force model ------------------------------------------------------------------------


def _content(view: SnapshotView, ino: int, size: int) -> bytes:
    return view.read(ino, 0, size, size)


def brute_diff(view_a: SnapshotView, view_b: SnapshotView) -> list[dict[str, Any]]:
    """The diff, computed from every object of both snapshots."""
    snaps = []
    for view in (view_a, view_b):
        entries: dict[str, Entry] = {os.fsdecode(p): e for p, e in manifest_view(view).items()}
        by_ino: dict[int, list[str]] = {}
        links: dict[int, dict[tuple[int, str], str]] = {}
        for path, entry in entries.items():
            by_ino.setdefault(entry.ino, []).append(path)
            if path:
                parent = path.rpartition("/")[0]
                links.setdefault(entry.ino, {})[(entries[parent].ino, path.rpartition("/")[2])] = path
        for paths in by_ino.values():
            paths.sort(key=lambda p: p.split("/"))
        snaps.append((entries, by_ino, links))
    (ents_a, inos_a, links_a), (ents_b, inos_b, links_b) = snaps
    out: list[dict[str, Any]] = []
    for ino in sorted(set(inos_a) | set(inos_b)):
        if ino not in inos_b:
            kind = KIND_OF_FMT[ents_a[inos_a[ino][0]].kind]
            out += [{"path": p, "kind": kind, "change": "deleted"} for p in inos_a[ino]]
            continue
        if ino not in inos_a:
            kind = KIND_OF_FMT[ents_b[inos_b[ino][0]].kind]
            out += [{"path": p, "kind": kind, "change": "created"} for p in inos_b[ino]]
            continue
        a, b = ents_a[inos_a[ino][0]], ents_b[inos_b[ino][0]]
        kind = KIND_OF_FMT[b.kind]
        old, new = links_a.get(ino, {}), links_b.get(ino, {})
        lost, gained = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        mine: dict[str, dict[str, Any]] = {}
        if len(lost) == 1 and len(gained) == 1:
            mine[new[gained[0]]] = {"path": new[gained[0]], "kind": kind, "change": "renamed",
                                    "from": old[lost[0]]}
        else:
            out += [{"path": old[e], "kind": kind, "change": "unlinked"} for e in lost]
            for e in gained:
                mine[new[e]] = {"path": new[e], "kind": kind, "change": "linked"}
        fields = {"mode": (a.mode, b.mode), "uid": (a.uid, b.uid), "gid": (a.gid, b.gid),
                  "size": (a.size, b.size), "mtime_ns": (a.mtime_ns, b.mtime_ns),
                  "ctime_ns": (a.ctime_ns, b.ctime_ns), "nlink": (a.nlink, b.nlink), "rdev": (0, 0),
                  "xattrs": (a.xattrs, b.xattrs), "target": (a.target, b.target)}
        detail: dict[str, Any] = {}
        attrs = [name for name, (x, y) in fields.items() if x != y]
        if attrs:
            detail["attributes"] = attrs
        if stat.S_ISREG(b.mode):
            ca, cb = _content(view_a, ino, a.size), _content(view_b, ino, b.size)
            blocks = []
            for block in range((b.size + BLOCK_SIZE - 1) // BLOCK_SIZE):
                start, end = block * BLOCK_SIZE, min((block + 1) * BLOCK_SIZE, b.size)
                if end > a.size or ca[start:end] != cb[start:end]:
                    blocks.append(block)
            ranges = ch.blocks_to_ranges(blocks, b.size)
            if ranges:
                detail["data"] = [list(r) for r in ranges]
        if a.size != b.size:
            detail["size"] = [a.size, b.size]
        if detail:
            first = inos_b[ino][0]
            mine.setdefault(first, {"path": first, "kind": kind, "change": "modified"}).update(detail)
        out += list(mine.values())
    out.sort(key=lambda item: (item["path"].split("/"), item["change"]))
    return out


def fast_diff(sim: CoreSim, base: int, new: int) -> list[dict[str, Any]]:
    changes = ch.scan(sim.area, base, new)
    view_a, view_b = sim.view(base), sim.view(new)
    return diff_snapshots(changes, ViewReader(view_a), ViewReader(view_b), view_a.root_ino)


# ---- tests ---------------------------------------------------------------------------------------------


def test_simple_changes(sim: CoreSim) -> None:
    sim.mkdir("d")
    sim.create("d/f", b"a" * (3 * BLOCK_SIZE))
    sim.create("g", b"hello")
    sim.create("keep", b"same")
    base = sim.snapshot("s1")
    sim.write("d/f", BLOCK_SIZE + 5, b"X")
    sim.write("d/f", 3 * BLOCK_SIZE, b"tail")
    sim.rename("g", "d/g2")
    sim.create("new", b"n")
    sim.unlink("keep")
    new = sim.snapshot("s2")
    got = fast_diff(sim, base, new)
    assert got == brute_diff(sim.view(base), sim.view(new))
    by_path = {(i["path"], i["change"]): i for i in got}
    assert by_path[("d/f", "modified")]["data"] == [[BLOCK_SIZE, BLOCK_SIZE], [3 * BLOCK_SIZE, 4]]
    assert by_path[("d/g2", "renamed")]["from"] == "g"
    assert ("new", "created") in by_path and ("keep", "deleted") in by_path


def test_written_back_is_no_change(sim: CoreSim) -> None:
    sim.create("f", b"a" * 1000)
    base = sim.snapshot("s1")
    sim.write("f", 0, b"a" * 10)  # same bytes: captured, but not a change of content
    sim.rename("f", "g")
    sim.rename("g", "f")
    new = sim.snapshot("s2")
    got = fast_diff(sim, base, new)
    assert got == brute_diff(sim.view(base), sim.view(new))
    assert all("data" not in item for item in got)


def test_scan_reads_only_the_interval(sim: CoreSim) -> None:
    sim.create("f", b"x" * 10)
    s1 = sim.snapshot("s1")
    sim.write("f", 0, b"y")
    s2 = sim.snapshot("s2")
    sim.write("f", 1, b"z")
    sim.create("late", b"")
    s3 = sim.snapshot("s3")
    changes = ch.scan(sim.area, s1, s2)
    assert set(changes.inodes) == {sim._ino("f")} and not changes.entries
    assert ch.scan(sim.area, s2, s3).entries  # "late" was created after s2


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_workload_matches_brute_force(sim: CoreSim, seed: int) -> None:
    rng = random.Random(seed)
    load = SimLoad(sim, rng)
    load.populate(40)
    for _ in range(20):
        load.step()
    seqs = [sim.snapshot("s0")]
    for round_ in range(6):
        for _ in range(rng.randrange(5, 40)):
            load.step()
        seqs.append(sim.snapshot(f"s{round_ + 1}"))
        if len(seqs) > 3 and rng.random() < 0.4:
            victim = seqs.pop(rng.randrange(1, len(seqs) - 1))
            sim.delete(victim)
    for _ in range(20):
        load.step()  # changes after the newest snapshot must not matter
    for i, base in enumerate(seqs):
        for new in seqs[i + 1:]:
            expected = brute_diff(sim.view(base), sim.view(new))
            got = fast_diff(sim, base, new)
            assert got == expected, f"seed {seed}: {base} -> {new}"


def test_view_source_reads_a_sparse_file_as_the_snapshot_saw_it(sim: CoreSim) -> None:
    """Data regions of a snapshot's file: the live file's, plus every captured block (a hole
    filled since, data cut off since), so a backup by inode skips holes and loses nothing."""
    size = 8 * BLOCK_SIZE
    sim.create("f", b"")
    sim.write("f", 0, b"a" * BLOCK_SIZE)
    sim.write("f", 4 * BLOCK_SIZE, b"b" * 100)
    sim.truncate("f", size)  # holes in blocks 1-3 and from block 5 on
    seq = sim.snapshot("s1")
    view, ino = sim.view(seq), sim._ino("f")
    expected = _content(view, ino, size)
    sim.write("f", 2 * BLOCK_SIZE, b"c" * 10)  # a hole filled after the snapshot
    sim.truncate("f", 3 * BLOCK_SIZE)  # block 4's data cut off after it
    source = ViewSource(view, ino, size)
    regions = source.data_regions(size)
    assert any(start <= 4 * BLOCK_SIZE and 4 * BLOCK_SIZE + 100 <= end for start, end in regions)
    assert all(0 <= start < end <= size for start, end in regions)
    reader = SparseReader(source, size)
    rebuilt = bytearray(size)
    pieces = list(reader.chunks())
    for (offset, length), piece in zip(reader.extents, pieces, strict=True):
        assert len(piece) == length
        rebuilt[offset:offset + length] = piece
    assert bytes(rebuilt) == expected
    assert reader.sha256 == hashlib.sha256(expected).hexdigest()
    assert [offset for offset, _ in reader.extents] == [0, 4 * BLOCK_SIZE]  # holes and zeros left out
