"""End-to-end acceptance: a real daemon, real live mounts over their backing
directories, the real browser, driven through the CLI.

- seeded random workloads on two volumes with snapshot sets in between, some
  deleted in random order; every remaining set equals the manifest taken at its
  instant, also after a daemon restart (the full size is a soak test, tests/soak);
- snapshot readers racing live overwriters never see post-snapshot bytes;
- a set never holds volume B's update without volume A's.
(kill -9 of a live mount process under heavy overwrites: tests/e2e/test_continuity.py.)
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowfs.manifest import Manifest, differences, manifest
from tests.support.daemon import DaemonRun
from tests.support.workload import Workload

pytestmark = pytest.mark.fuse


def _set_path(run: DaemonRun, set_id: str, volume: str) -> str:
    return str(run.mount_root / "snapshots" / set_id / volume)


def _check_sets(run: DaemonRun, manifests: dict[str, dict[str, Manifest]]) -> None:
    for set_id, per_volume in manifests.items():
        for volume, expected in per_volume.items():
            got = manifest(_set_path(run, set_id, volume))
            diff = differences(expected, got)
            assert not diff, f"set {set_id} volume {volume}: " + "\n".join(diff)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_workload_two_volumes(daemon: DaemonRun, seed: int) -> None:
    random_workload_two_volumes(daemon, seed, steps=1500, sets=12)


def random_workload_two_volumes(daemon: DaemonRun, seed: int, steps: int, sets: int) -> None:
    """`steps` random changes over two volumes with `sets` snapshot sets taken in between, some
    deleted; every remaining set equals its manifest, also after a daemon restart."""
    rng = random.Random(seed)
    roots = {name: str(daemon.add_volume(name)) for name in ("alpha", "beta")}
    daemon.wait_ready()
    loads = {name: Workload(root, random.Random(rng.random())) for name, root in roots.items()}
    manifests: dict[str, dict[str, Manifest]] = {}
    every = steps // sets
    try:
        for step in range(steps):
            loads[rng.choice(sorted(loads))].step()
            if step % every == every - 1:
                # nothing writes between the manifest and the snapshot: this is the instant
                expected = {name: manifest(root) for name, root in roots.items()}
                created = daemon.snapshot(*roots)
                manifests[created["set_id"]] = expected
                if len(manifests) > 3 and rng.random() < 0.3:
                    victim = rng.choice(sorted(manifests))
                    daemon.cli("snapshot", "delete", victim)
                    del manifests[victim]
    finally:
        for load in loads.values():
            load.close()
    listed = {s["set_id"] for s in daemon.cli("snapshot", "list", "--json")}
    assert listed == set(manifests)
    _check_sets(daemon, manifests)
    daemon.stop()
    daemon.start()
    daemon.wait_ready()
    _check_sets(daemon, manifests)


def _overwriter(path: str, block: int, blocks: int) -> subprocess.Popen[bytes]:
    """A process that overwrites every block of `path` with increasing generations."""
    code = f"""
import os, struct, sys
fd = os.open({path!r}, os.O_WRONLY)
gen = 1
while True:
    for b in range({blocks}):
        try:
            os.pwrite(fd, struct.pack('>Q', gen) * ({block} // 8), b * {block})
        except OSError:
            pass
    gen += 1
"""
    return subprocess.Popen([sys.executable, "-c", code])


def _generations(data: bytes, block: int) -> list[int]:
    gens = []
    for start in range(0, len(data), block):
        chunk = data[start:start + block]
        (gen,) = struct.unpack(">Q", chunk[:8])
        assert chunk == struct.pack(">Q", gen) * (block // 8), "torn block"
        gens.append(gen)
    return gens


def test_snapshot_reads_race_live_overwrites(daemon: DaemonRun) -> None:
    block, blocks = 16384, 256
    root = daemon.add_volume("race")
    daemon.wait_ready()
    path = root / "stream"
    path.write_bytes(struct.pack(">Q", 0) * (block * blocks // 8))
    writers = [_overwriter(str(path), block, blocks)]
    try:
        time.sleep(0.5)
        for _ in range(3):
            created = daemon.snapshot("race")
            snap = Path(_set_path(daemon, created["set_id"], "race")) / "stream"
            first = snap.read_bytes()
            gens = _generations(first, block)
            # one writer, blocks in order: at any instant the file is [g+1]*k + [g]*(n-k)
            assert max(gens) - min(gens) <= 1 and gens == sorted(gens, reverse=True)
            for _ in range(10):
                fd = os.open(snap, os.O_RDONLY)
                try:
                    # drop cached pages so each pass reads through the browser again
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    again = b"".join(os.pread(fd, 65536, off) for off in range(0, len(first), 65536))
                finally:
                    os.close(fd)
                assert again == first, "a snapshot read returned post-snapshot bytes"
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()


def test_set_is_one_instant(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b")
    daemon.wait_ready()
    code = f"""
import os
i = 0
while True:
    i += 1
    for path in ({str(a / 'counter')!r}, {str(b / 'counter')!r}):
        with open(path + '.tmp', 'w') as f:
            f.write(str(i))
        os.rename(path + '.tmp', path)
"""
    (a / "counter").write_text("0")
    (b / "counter").write_text("0")
    loop = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)
        for _ in range(15):
            created = daemon.snapshot("a", "b")
            value_a = int(Path(_set_path(daemon, created["set_id"], "a"), "counter").read_text())
            value_b = int(Path(_set_path(daemon, created["set_id"], "b"), "counter").read_text())
            assert value_b <= value_a, f"set holds B's update {value_b} without A's ({value_a})"
            assert value_a - value_b <= 1
    finally:
        loop.kill()
        loop.wait()
