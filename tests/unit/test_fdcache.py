"""The one descriptor cache (`linux.fdcache`): least recently used out, pinned while borrowed,
every descriptor disposed of exactly once. Real descriptors of real files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from shadowfs.linux.fdcache import DescriptorCache


class Files:
    """Opens `<dir>/<key>` and records every descriptor opened and disposed of."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[int] = []
        self.disposed: list[int] = []
        self.lock = threading.Lock()

    def open(self, key: str) -> int:
        fd = os.open(self.root / key, os.O_RDONLY)
        with self.lock:
            self.opened.append(fd)
        return fd

    def dispose(self, fd: int) -> None:
        with self.lock:
            self.disposed.append(fd)
        os.close(fd)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    for name in "abcdef":
        (tmp_path / name).write_bytes(name.encode())
    return Files(tmp_path)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_least_recently_used_goes_first(files: Files) -> None:
    cache: DescriptorCache[str] = DescriptorCache(2, files.open, files.dispose)
    a = cache.open("a")
    cache.open("b")
    assert cache.open("a") == a  # a is now the most recently used
    cache.open("c")  # evicts b
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == a
    assert len(files.disposed) == 1 and not is_open(files.disposed[0])
    cache.close()
    assert sorted(files.disposed) == sorted(files.opened)


def test_a_borrowed_descriptor_is_never_disposed_under_its_borrower(files: Files) -> None:
    cache: DescriptorCache[str] = DescriptorCache(1, files.open, files.dispose)
    with cache.borrow("a") as first:
        for key in "bcdef":  # every one evicts the one before, never the borrowed one
            with cache.borrow(key) as fd:
                assert os.pread(fd, 1, 0) == key.encode()
        assert os.pread(first, 1, 0) == b"a"
        cache.close()
        assert os.pread(first, 1, 0) == b"a"  # closed only when given back
    assert not is_open(first)
    assert sorted(files.disposed) == sorted(files.opened)


def test_put_replaces_and_disposes_the_old_descriptor(files: Files) -> None:
    cache: DescriptorCache[str] = DescriptorCache(4, files.open, files.dispose)
    old = cache.open("a")
    new = files.open("a")
    cache.put("a", new)
    assert cache.get("a") == new and files.disposed == [old]
    cache.close()
    cache.put("b", files.open("b"))  # after close: disposed at once
    assert len(cache) == 0 and sorted(files.disposed) == sorted(files.opened)
    with pytest.raises(ValueError):
        cache.open("c")


def test_discard_by_key(files: Files) -> None:
    cache: DescriptorCache[str] = DescriptorCache(8, files.open, files.dispose)
    for key in "abc":
        cache.open(key)
    with cache.borrow("b") as pinned:
        cache.discard(lambda key: key in "ab")
        assert cache.get("a") is None and cache.get("b") is None and cache.get("c") is not None
        assert is_open(pinned)
    assert not is_open(pinned)
    assert len(files.disposed) == 2


def test_threads_borrowing_the_same_keys(files: Files) -> None:
    cache: DescriptorCache[str] = DescriptorCache(2, files.open, files.dispose)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(300):
                key = "abcdef"[(round_ + offset) % 6]
                with cache.borrow(key) as fd:
                    assert os.pread(fd, 1, 0) == key.encode()
        except BaseException as exc:  # reported below, on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    cache.close()
    assert sorted(files.disposed) == sorted(files.opened)  # every one exactly once


def test_capacity_must_hold_one(files: Files) -> None:
    with pytest.raises(ValueError):
        DescriptorCache(0, files.open)
