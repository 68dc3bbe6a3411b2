"""Concurrent reads through the snapshot browser, with and without worker threads.

- Many threads reading one snapshot file at random offsets (each through its
  own descriptor and through a shared one) get exactly the bytes of the instant,
  whether a block comes from the live file or from the diff area.
- A snapshot deleted (and its extents punched out) while its files are read
  gives every read either the right bytes or an error, never other bytes, and
  the browser keeps serving.

The pieces that make threads safe are tested without a mount in
tests/core/test_browser_volume.py.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Iterator

import pytest

from shadowfs.diffarea.schema import BLOCK_SIZE
from tests.support.browser_fixtures import Volume, Workspace, workspace

__all__ = ["workspace"]  # the fixture, imported for pytest

pytestmark = pytest.mark.fuse

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
    assert os.listdir(workspace.mount) == ["by-time", "by-volume"]  # still serving, the set gone
