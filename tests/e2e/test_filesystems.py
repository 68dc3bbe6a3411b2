"""Volumes on ext4, XFS and btrfs (issue 12): the same snapshot work through the real daemon on
an image of each, made on a loop device by the test (tests/support/loopfs.py).

Each run adds a volume with its live mount beside the backing tree (so the test can look at
`<backing>/.shadowfs` itself), writes more files than the live mount keeps descriptors of (so
later changes reopen objects by inode number, with the generation on XFS and btrfs), takes a
snapshot, overwrites, truncates, renames and unlinks, and checks that the snapshot equals the
manifest taken at its instant, before and after a daemon restart (a new browser process opens
every object by number with an empty generation cache), and that the captured blocks went into
`<backing>/.shadowfs/blocks.dat` on the volume's filesystem.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.linux import fshandles, syscalls
from shadowfs.manifest import Manifest, differences, manifest
from tests.support import loopfs
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse

MANY = 4200  # more than the live mount's 4096 cached descriptors


@pytest.fixture(params=["ext4", "xfs", "btrfs"])
def volume_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(kind, mount point) of a fresh image; set up before the daemon, so torn down after it."""
    kind: str = request.param
    reason = loopfs.unavailable(kind)
    if reason is not None:
        pytest.skip(f"no {kind} image: {reason}")
    base = tmp_path / "images"
    base.mkdir()
    with loopfs.loop_filesystem(kind, base, 512 << 20) as mountpoint:
        yield kind, mountpoint


def _check(run: DaemonRun, set_id: str, expected: Manifest) -> None:
    got = manifest(str(run.mount_root / "snapshots" / set_id / "vol"))
    diff = differences(expected, got)
    assert not diff, f"set {set_id}: " + "\n".join(diff)


def test_snapshots_on_each_filesystem(volume_fs: tuple[str, Path], daemon: DaemonRun) -> None:
    kind, mountpoint = volume_fs
    backing = mountpoint / "tree"
    backing.mkdir()
    live = daemon.base / "live"
    live.mkdir()
    added = daemon.cli("volume", "add", "vol", str(backing), "--mount", str(live), "--json")
    assert added["blocks"] == "volume"  # the state directory is on another filesystem
    daemon.wait_ready()
    fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fshandles.filesystem_of(fd, fresh=True).kind.value == kind
    finally:
        os.close(fd)

    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    (live / "big").write_bytes(big)
    (live / "dir" / "sub").mkdir(parents=True)
    for i in range(MANY):
        (live / "dir" / f"f{i:05d}").write_bytes(b"%d\n" % i * (i % 7 + 1))
    (live / "dir" / "sub" / "keep").write_bytes(b"keep me")
    os.symlink("big", live / "link")
    os.link(live / "big", live / "dir" / "big-again")
    os.setxattr(live / "big", "user.shadowfs", b"xattr value")

    first = manifest(str(live))
    set1 = daemon.snapshot("vol")["set_id"]

    # the earliest files' descriptors were evicted: these reopen them by inode number
    for i in range(0, 300, 3):
        (live / "dir" / f"f{i:05d}").write_bytes(b"changed")
    with open(live / "big", "r+b") as f:
        f.write(b"\xff" * (1 << 20))
    os.truncate(live / "dir" / "f00001", 1)
    os.rename(live / "dir" / "sub", live / "moved")
    os.unlink(live / "dir" / "f00002")
    os.unlink(live / "link")
    os.setxattr(live / "big", "user.shadowfs", b"changed")
    second = manifest(str(live))
    set2 = daemon.snapshot("vol")["set_id"]
    for i in range(1, 200, 3):
        os.unlink(live / "dir" / f"f{i:05d}")
    os.truncate(live / "big", 4096)

    _check(daemon, set1, first)
    _check(daemon, set2, second)

    blocks = backing / ".shadowfs" / "blocks.dat"
    assert blocks.stat().st_size >= 1 << 20, "the first overwrite was not captured on the volume"
    assert blocks.stat().st_dev == backing.stat().st_dev
    assert not (daemon.state / "volumes" / "vol" / "diffarea" / "blocks.dat").exists()

    daemon.stop()  # the browser goes with it; the mount process is adopted by the next daemon
    daemon.start()
    daemon.wait_ready()
    _check(daemon, set1, first)
    _check(daemon, set2, second)


def test_a_btrfs_tree_that_holds_another_subvolume_is_refused(tmp_path: Path) -> None:
    reason = loopfs.unavailable("btrfs")
    if reason is not None:
        pytest.skip(f"no btrfs image: {reason}")
    base = tmp_path / "images"
    base.mkdir()
    with loopfs.loop_filesystem("btrfs", base) as mountpoint:
        tree = mountpoint / "tree"
        (tree / "deep").mkdir(parents=True)
        syscalls.check_backing_fs(str(tree))  # one subvolume: accepted
        subprocess.run(["btrfs", "subvolume", "create", str(tree / "deep" / "sub")], check=True,
                       capture_output=True)
        with pytest.raises(ValueError, match=r"deep/sub is another btrfs subvolume"):
            syscalls.check_backing_fs(str(tree))
        syscalls.check_backing_fs(str(tree / "deep" / "sub"))  # the subvolume itself is a volume's tree
