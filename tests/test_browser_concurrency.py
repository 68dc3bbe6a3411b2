"""Concurrent reads through the snapshot browser, with and without worker threads.

- Many threads reading one snapshot file at random offsets (each through its
  own descriptor and through a shared one) get exactly the bytes of the instant,
  whether a block comes from the live file or from the diff area.
- A snapshot deleted (and its extents punched out) while its files are read
  gives every read either the right bytes or an error, never other bytes, and
  the browser keeps serving.
- The pieces that make threads safe, without a mount: borrowed descriptors
  of `LiveObjects`, the cursor walk of `block_refs_range`, `read_blocks_into`,
  and a volume whose close waits for its pinned users.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Iterator

import lmdb
import pytest

from shadowfs.browser.volumes import BrowserVolume
from shadowfs.diffarea.schema import BLOCK_SIZE
from shadowfs.snapshot.view import LiveObjects
from tests.browser_fixtures import Volume, Workspace, needs_fuse, workspace
from tests.coresim import CoreSim

__all__ = ["workspace"]  # the fixture, imported for pytest

SET_A = "3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
FILE_BLOCKS = 96


@pytest.fixture(params=[0, 8], ids=["inline", "threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Browsers started by the test serve with this many worker threads."""
    monkeypatch.setenv("SHADOWFS_BROWSER_THREADS", str(request.param))
    yield request.param


def _instant_file(v: Volume) -> tuple[bytes, int]:
    """A file with live and captured blocks at the snapshot: (its bytes then, seq)."""
    rng = random.Random(7)
    data = rng.randbytes(FILE_BLOCKS * BLOCK_SIZE - 1234)  # a short last block
    with open(v.path("f"), "wb") as f:
        f.write(data)
    seq = v.take(SET_A)
    for block in range(0, FILE_BLOCKS, 3):  # every third block captured, some in runs
        v.write("f", block * BLOCK_SIZE + 17, b"after" * 3000)
    v.write("f", 40 * BLOCK_SIZE, bytes(4 * BLOCK_SIZE))  # captured runs next to each other
    v.truncate("f", 50 * BLOCK_SIZE + 5)  # the tail is captured too
    return data, seq


def _forget_cache(fd: int) -> None:
    """Drop the kernel's cached pages of a browser file, so the next reads reach the browser."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _random_ranges(rng: random.Random, size: int, count: int) -> list[tuple[int, int]]:
    return [(rng.randrange(size), rng.choice([1, 4096, BLOCK_SIZE, 3 * BLOCK_SIZE + 5, 1 << 20]))
            for _ in range(count)]


@needs_fuse
def test_concurrent_reads_give_the_exact_bytes(workspace: Workspace, threads: int) -> None:
    v = workspace.volume("data", 1)
    data, _ = _instant_file(v)
    browser = workspace.browser([v])
    path = os.path.join(workspace.mount, SET_A, "data", "f")
    shared = os.open(path, os.O_RDONLY)
    failures: list[str] = []

    def reader(number: int) -> None:
        rng = random.Random(number)
        own = os.open(path, os.O_RDONLY)
        try:
            for round_ in range(6):
                fd = shared if number % 2 else own
                _forget_cache(fd)
                for offset, length in _random_ranges(rng, len(data), 20):
                    got = os.pread(fd, length, offset)
                    if got != data[offset:offset + length]:
                        failures.append(f"reader {number} round {round_}: {length} bytes at {offset}")
            _forget_cache(own)
            whole = b"".join(iter(lambda: os.read(own, 1 << 20), b""))
            if whole != data:
                failures.append(f"reader {number}: sequential read differs")
        finally:
            os.close(own)

    try:
        workers = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        os.close(shared)
    assert failures == []
    assert browser.call({"op": "status"})["ok"]


@needs_fuse
def test_snapshot_deleted_while_its_file_is_read(workspace: Workspace, threads: int) -> None:
    v = workspace.volume("data", 1)
    data, seq = _instant_file(v)
    workspace.browser([v])
    path = os.path.join(workspace.mount, SET_A, "data", "f")
    fds = [os.open(path, os.O_RDONLY) for _ in range(4)]
    stop, deleted = threading.Event(), threading.Event()
    wrong: list[str] = []
    errors: set[int] = set()
    answered = [0]

    def reader(number: int) -> None:
        rng = random.Random(number)
        fd = fds[number]
        while not stop.is_set():
            _forget_cache(fd)
            for offset, length in _random_ranges(rng, len(data), 10):
                try:
                    got = os.pread(fd, length, offset)
                except OSError as exc:
                    errors.add(exc.errno or 0)
                    continue
                answered[0] += 1
                # an error in the middle of a read ends it early (POSIX short read)
                short = len(got) < min(length, len(data) - offset)
                if got != data[offset:offset + len(got)] or (short and not deleted.is_set()):
                    wrong.append(f"reader {number}: {len(got)} of {length} bytes at {offset}")

    workers = [threading.Thread(target=reader, args=(n,)) for n in range(len(fds))]
    try:
        for worker in workers:
            worker.start()
        while answered[0] < 50 and all(worker.is_alive() for worker in workers):
            threading.Event().wait(0.01)
        deleted.set()
        v.delete(seq)  # drops the pre-images and punches their extents out
        threading.Event().wait(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        for fd in fds:
            os.close(fd)
    assert wrong == []
    assert errors <= {errno.ESTALE}, errors
    assert os.listdir(workspace.mount) == ["by-time"]  # still serving, the set gone


# ---- without a mount ------------------------------------------------------------------------


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
