"""The pyfuse3 patches in use (patches/pyfuse3/, `fuse_adapter.binding`) and the stock paths.

Each test runs twice: with the patched pyfuse3 that tools/_setup.sh builds, and with
$SHADOWFS_STOCK_PYFUSE3 set, which makes the mount processes act as on a stock pyfuse3
3.5 (the features are looked up at run time). Either way the live mount and the
browser return exact bytes; with the patches the new paths are taken: write data as a
view of libfuse's buffer (also across a capture's await), reads answered from the
backing file (`FileRange`), and the browser's reads by inode with OPEN answered once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.diffarea.schema import BLOCK_SIZE
from shadowfs.fuse_adapter import STOCK_ENV, Binding, binding
from tests.mount.livefs_fixtures import LiveVolume
from tests.support.browser_fixtures import Workspace, workspace

__all__ = ["workspace"]

MiB = 1024 * 1024
SET_A = "set-a"


@pytest.fixture(params=["patched", "stock"])
def stock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """True when the mount processes started by the test must use the stock paths."""
    if request.param == "stock":
        monkeypatch.setenv(STOCK_ENV, "1")
    elif binding() != Binding(write_memoryview=True, file_range=True, read_inode=True):
        pytest.skip("this pyfuse3 lacks shadowfs's patches")
    yield request.param == "stock"


def _features_line(stock: bool) -> str:
    on = not stock
    return f"Binding(write_memoryview={on}, file_range={on}, read_inode={on})"


def _cold_read(path: str) -> bytes:
    """The file's bytes as the mount serves them now (its page cache dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 3 * MiB + 17):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def test_live_mount_writes_and_reads_exact_bytes(stock: bool) -> None:
    vol = LiveVolume(in_place=False)
    try:
        path = vol.path("f")
        data = bytearray(os.urandom(8 * MiB + 123))
        with open(path, "wb") as f:  # big writes: the kernel sends up to max_write each
            f.write(data)
        seq = vol.client.snapshot()
        before = bytes(data)

        def overwrite(part: int) -> None:  # each first write of a block awaits its capture
            fd = os.open(path, os.O_WRONLY)
            try:
                for offset in range(part * MiB, (part + 1) * MiB, 3 * BLOCK_SIZE + 999):
                    chunk = bytes([part + 1]) * (BLOCK_SIZE + 501)
                    os.pwrite(fd, chunk, offset)
                    data[offset:offset + len(chunk)] = chunk
            finally:
                os.close(fd)

        writers = [threading.Thread(target=overwrite, args=(part,)) for part in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert _cold_read(path) == data
        assert Path(vol.backing, "f").read_bytes() == data
        with vol.reader(seq) as snap:
            assert snap.read("f") == before
        assert _features_line(stock) in vol.log()
    finally:
        log = vol.log()
        vol.cleanup()
    assert not vol.unexpected_errors(log), "mount process logged errors:\n" + log


def test_browser_reads_by_inode_with_one_open(stock: bool, workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    sizes = [0, 1, 4095, BLOCK_SIZE, 3 * BLOCK_SIZE + 5, 2 * MiB + 7] * 3
    want = {f"f{i}": os.urandom(size) for i, size in enumerate(sizes)}
    for name, content in want.items():
        Path(v.path(name)).write_bytes(content)
    v.take(SET_A)
    for name in ("f4", "f5", "f11"):  # changed after the snapshot: captured blocks are read
        v.write(name, BLOCK_SIZE - 3, b"\xee" * (BLOCK_SIZE + 9))
    v.truncate("f17", 10)
    browser = workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")
    for _ in range(2):
        for name, content in want.items():
            assert _cold_read(os.path.join(root, name)) == content, name
    opens = browser.call({"op": "status"})["opens"]
    assert opens == (2 * len(want) if stock else 1)
    with pytest.raises(OSError):
        open(os.path.join(root, "f1"), "r+b")  # still read-only
    with open(workspace.log_path, encoding="utf-8") as log:
        assert _features_line(stock) in log.read()
