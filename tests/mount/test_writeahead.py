"""Capture ahead of sequential overwriters (live/writeahead.py) on a real live mount:
windows captured in the background while the writer goes on never let a write past an
uncaptured block, also when snapshots come between the windows."""

from __future__ import annotations

import os
import threading

from shadowfs.live import writeahead
from tests.mount import livefs_fixtures
from tests.mount.livefs_fixtures import LiveVolume
from tests.mount.test_livefs import read, snapshot_manifest, snapshots_while_running, write

volume = livefs_fixtures.volume
MiB = 1 << 20


def _overwrite(path: str, size: int, chunk: int, fill: int) -> None:
    data = bytes([fill]) * chunk
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, chunk):
            os.pwrite(fd, data[:size - offset], offset)
    finally:
        os.close(fd)


def test_sequential_overwrite_keeps_every_old_byte(volume: LiveVolume) -> None:
    size = 3 * writeahead.CAPTURE_AHEAD_MAX + 12345  # many windows, a short last block
    original = os.urandom(size)
    write(volume.path("big"), original)
    seq = volume.client.snapshot()
    _overwrite(volume.path("big"), size, MiB, 0x5A)
    assert read(volume.path("big")) == b"\x5a" * size
    with volume.reader(seq) as snap:
        assert snap.read("big") == original
    # Capture ahead stops at the file's size at the snapshot: appends stay free.
    assert volume.used_bytes() < size + 2 * MiB


def test_snapshots_between_windows_under_sequential_writers(volume: LiveVolume) -> None:
    """Writers overwrite whole files front to back, pass after pass, while snapshots are
    taken; every snapshot equals the backing tree recorded while changes were held."""
    client = volume.client
    assert client is not None
    size = 40 * MiB
    for index in range(2):
        write(volume.path(f"f{index}"), os.urandom(size))
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        fill = index * 100
        try:
            while not stop.is_set():
                fill = (fill + 1) % 256
                _overwrite(volume.path(f"f{index}"), size, (index + 1) * 256 * 1024, fill)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        manifests = snapshots_while_running(client, volume, rounds=6, pause=0.2, hold_timeout=20.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures
    for seq, expected in manifests.items():
        assert snapshot_manifest(volume, seq) == expected, seq
