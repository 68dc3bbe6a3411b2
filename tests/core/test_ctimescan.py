"""`linux.ctimescan` on real directory trees: exactly what changed after an instant is found.

A tree is made, an instant taken (`ctime_clock_ns`, after a pause longer than a clock tick), then
some objects are changed in every way that moves a ctime (write, chmod, utime, create, rename,
delete, xattr); the scan must list exactly those, plus the directories whose entries changed, and
nothing under the top-level `.shadowfs`. Symlinks are never followed, other filesystems never
entered, and objects that vanish mid-walk are passed over.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.linux.ctimescan import Changed, changed_since, ctime_clock_ns

TICK = 0.05  # longer than a kernel clock tick (4 ms at HZ=250, 10 ms at HZ=100)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """backing/ with files, nested directories, symlinks and a .shadowfs state directory."""
    top = tmp_path / "backing"
    for directory in ("d", "e/f/g", "keep/deep", ".shadowfs/graveyard", "e/.shadowfs", "gone/inner", "swap"):
        (top / directory).mkdir(parents=True)
    for name in ("a", "b", "d/x", "d/y", "e/f/g/h", "keep/deep/k", ".shadowfs/state", "gone/inner/z"):
        (top / name).write_bytes(b"data " + name.encode())
    (top / "to_d").symlink_to("d")
    (top / "to_out").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o").write_bytes(b"o")
    return top


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def instant() -> int:
    """An instant after everything made so far and before everything made next."""
    time.sleep(TICK)
    since = ctime_clock_ns()
    time.sleep(TICK)  # not needed for correctness; makes a wrong clock fail the tests every time
    return since


def scan(root_fd: int, since: int) -> dict[bytes, Changed]:
    found = list(changed_since(root_fd, since))
    paths = [item.path for item in found]
    assert len(paths) == len(set(paths)), paths
    return {item.path: item for item in found}


def test_nothing_changed_nothing_listed(root: Path, root_fd: int) -> None:
    assert scan(root_fd, instant()) == {}
    assert set(scan(root_fd, 0)) >= {b"", b"a", b"d", b"d/x", b"e/f/g/h", b"to_d", b"to_out", b"e/.shadowfs"}


def test_exactly_the_changed_objects_and_their_directories(root: Path, root_fd: int, tmp_path: Path) -> None:
    since = instant()
    with open(root / "a", "ab") as f:
        f.write(b"more")  # data: a
    os.chmod(root / "d/x", 0o600)  # mode: d/x
    os.utime(root / "e/f/g/h", ns=(1, 1))  # times: h (ctime is set to now, whatever the times)
    os.setxattr(root / "keep/deep/k", "user.note", b"v")  # xattr: k
    (root / "e/f/new").write_bytes(b"n")  # new file: new, and its directory f
    os.rename(root / "d/y", root / "e/y")  # rename: y, d and e
    (root / "e/.shadowfs/z").write_bytes(b"z")  # a deeper .shadowfs is an ordinary directory
    (root / ".shadowfs/state").write_bytes(b"changed")  # not looked at
    (root / ".shadowfs/graveyard/1").write_bytes(b"1")
    (tmp_path / "outside/o").write_bytes(b"changed")  # reached only through a symlink
    (root / "d/to_x").symlink_to("x")  # a new symlink: to_x and d
    found = scan(root_fd, since)
    assert set(found) == {b"a", b"d/x", b"e/f/g/h", b"keep/deep/k", b"e/f", b"e/f/new", b"d", b"e", b"e/y",
                          b"e/.shadowfs", b"e/.shadowfs/z", b"d/to_x"}
    dirs = {b"d", b"e", b"e/f", b"e/.shadowfs"}
    for path, item in found.items():
        st = os.lstat(root / os.fsdecode(path))
        assert (item.ino, item.is_dir, item.ctime_ns) == (st.st_ino, path in dirs, st.st_ctime_ns)
        assert item.ctime_ns >= since


def test_the_root_and_deletions_show_as_changed_directories(root: Path, root_fd: int) -> None:
    since = instant()
    (root / "b").unlink()
    os.unlink(root / "gone/inner/z")
    found = scan(root_fd, since)
    assert set(found) == {b"", b"gone/inner"}
    assert found[b""] == Changed(os.fstat(root_fd).st_ino, b"", True, os.fstat(root_fd).st_ctime_ns)


def test_the_skipped_entry_is_only_the_top_level_one_and_can_be_chosen(root: Path, root_fd: int) -> None:
    since = instant()
    (root / ".shadowfs/graveyard/2").write_bytes(b"2")
    (root / "e/.shadowfs/w").write_bytes(b"w")
    assert set(scan(root_fd, since)) == {b"e/.shadowfs", b"e/.shadowfs/w"}
    assert {item.path for item in changed_since(root_fd, since, skip=b"")} == {
        b".shadowfs/graveyard", b".shadowfs/graveyard/2", b"e/.shadowfs", b"e/.shadowfs/w"}
    assert {item.path for item in changed_since(root_fd, since, skip=b"e")} == {
        b".shadowfs/graveyard", b".shadowfs/graveyard/2"}


def test_symlinks_are_listed_never_followed(root: Path, root_fd: int, tmp_path: Path) -> None:
    all_paths = set(scan(root_fd, 0))
    assert not any(path.startswith((b"to_d/", b"to_out/")) for path in all_paths)
    since = instant()
    (root / "d/x").write_bytes(b"changed through the tree")
    (tmp_path / "outside/o2").write_bytes(b"outside")
    os.chmod(tmp_path / "outside", 0o700)
    found = scan(root_fd, since)
    assert set(found) == {b"d/x"}
    # a directory swapped for a symlink between listing and entering is not entered
    walk = changed_since(root_fd, 0)
    first = next(walk)
    assert first.path == b""  # the root's own listing is done; its subdirectories are visited later
    os.rename(root / "swap", tmp_path / "swapped")
    (root / "swap").symlink_to(tmp_path / "outside")
    rest = {item.path for item in walk}
    assert rest and not any(path.startswith(b"swap/") for path in rest)


def test_objects_that_vanish_mid_walk_are_passed_over(root: Path, root_fd: int, tmp_path: Path) -> None:
    walk = changed_since(root_fd, 0)
    assert next(walk).path == b""
    os.rename(root / "gone", tmp_path / "gone")  # directories listed but not yet entered: gone,
    os.rename(root / "keep", tmp_path / "keep")
    (root / "keep").write_bytes(b"now a file")  # replaced by a file,
    os.rename(root / "swap", tmp_path / "swap")
    os.mkfifo(root / "swap")  # replaced by a fifo, which an open without O_DIRECTORY would block on
    rest = {item.path for item in walk}
    assert not any(path.startswith((b"gone/", b"keep/", b"swap/")) for path in rest)
    assert {b"a", b"d/x", b"e/f/g/h"} <= rest


def test_closing_early_closes_every_descriptor(root_fd: int) -> None:
    before = set(os.listdir("/proc/self/fd"))
    walk = changed_since(root_fd, 0)
    for _ in range(5):
        next(walk)
    assert len(set(os.listdir("/proc/self/fd")) - before) >= 1
    walk.close()
    assert set(os.listdir("/proc/self/fd")) == before
    assert len(list(changed_since(root_fd, 0))) > 5
    assert set(os.listdir("/proc/self/fd")) == before
    assert os.lseek(root_fd, 0, os.SEEK_CUR) == 0  # the caller's descriptor is not moved


def test_the_root_must_be_a_directory(root: Path) -> None:
    fd = os.open(root / "a", os.O_RDONLY)
    try:
        with pytest.raises(NotADirectoryError):
            list(changed_since(fd, 0))
    finally:
        os.close(fd)


def test_the_clock_is_the_one_ctimes_come_from(tmp_path: Path) -> None:
    """Every change after `ctime_clock_ns()` has a ctime at or after it (time.time_ns() would not do:
    the kernel stamps ctimes from its coarse clock, which lags it by up to a tick)."""
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for i in range(500):
            since = ctime_clock_ns()
            os.fchmod(fd, 0o600 if i % 2 else 0o644)
            assert os.fstat(fd).st_ctime_ns >= since
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_other_filesystems_are_not_entered(root: Path, root_fd: int) -> None:
    point = root / "e/mnt"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "shadowfs-test", str(point)], check=True)
    try:
        (point / "inside_the_mount").write_bytes(b"x")
        since = instant()
        (point / "changed_in_the_mount").write_bytes(b"x")
        os.chmod(point, 0o700)
        (root / "a").write_bytes(b"changed")
        assert set(scan(root_fd, since)) == {b"a"}
        assert not any(path.startswith(b"e/mnt") for path in scan(root_fd, 0))
    finally:
        subprocess.run(["umount", str(point)], check=True)
