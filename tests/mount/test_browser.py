"""The snapshot browser through real mounts: a `shadowfs.browser.process` child on a
socketpair, volumes changed capture-first like the live mount does (no live
mount needed), and every snapshot compared with a manifest taken at its instant.

Its handlers called without a mount: tests/ops/test_browser_ops.py; node ids:
tests/unit/test_browser_nodes.py.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import os
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.diffarea.schema import BLOCK_SIZE, META_NEXT_SEQ, u64
from shadowfs.errors import BackupJobError
from shadowfs.ipc import frames
from shadowfs.linux import mounts
from tests.support.browser_fixtures import (
    ALL_FIELDS,
    COPY_FIELDS,
    BrowserProcess,
    Volume,
    Workspace,
    compare,
    link_groups,
    manifest,
    wait_for,
    workspace,
)

__all__ = ["workspace"]  # the fixture, imported for pytest

pytestmark = pytest.mark.fuse

SET_A = "0d8e6a52-4a8e-4f3e-9d0c-1f6a2b3c4d5e"
SET_B = "7f1e2d3c-4b5a-4697-8887-a9b0c1d2e3f4"
SET_C = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
WHEN = "2026-11-21T20:43:52Z"
NOBODY = 65534


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def build_rich_tree(v: Volume) -> None:
    """Every kind of object the browser must show as it was: written directly (no snapshot yet)."""
    p = v.path
    os.makedirs(p("docs/deep/deeper"))
    _write(p("docs/a.txt"), b"alpha\n" * 100)
    os.link(p("docs/a.txt"), p("docs/deep/a-link"))
    os.link(p("docs/a.txt"), p("a-link2"))
    with open(p("big"), "wb") as f:  # several blocks with a hole in the middle
        f.write(os.urandom(BLOCK_SIZE + 1000))
        f.seek(5 * BLOCK_SIZE)
        f.write(os.urandom(2 * BLOCK_SIZE + 77))
    _write(p("empty"), b"")
    _write(p("gone.txt"), b"unlinked after the snapshot")
    os.symlink("../a.txt", p("docs/deep/sym"))
    os.symlink("/nonexistent/target", p("dangling"))
    os.mkfifo(p("fifo"))
    os.mknod(p("null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p("loopdev"), 0o640 | stat.S_IFBLK, os.makedev(7, 200))
    os.setxattr(p("docs/a.txt"), "user.color", b"blue")
    os.setxattr(p("docs"), "user.tag", b"dir xattr")
    os.makedirs(p("private"))
    _write(p("private/secret"), b"root only")
    os.chmod(p("private/secret"), 0o600)
    _write(p("private/shared"), b"everyone")
    os.chmod(p("private/shared"), 0o644)
    _write(p("private/acl.txt"), b"readable by nobody through an ACL")
    os.chmod(p("private/acl.txt"), 0o600)
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:r", p("private/acl.txt")], check=True)
    subprocess.run(["setfacl", "-d", "-m", f"u:{NOBODY}:rx", p("private")], check=True)
    os.makedirs(p("closed"))
    _write(p("closed/inside"), b"x")
    os.chmod(p("closed"), 0o700)
    _write(p("owned"), b"owned by someone else")
    os.chown(p("owned"), 1234, 5678)
    os.chmod(p("owned"), 0o4750)
    os.utime(p("owned"), ns=(1_000_000_000, 1_234_567_890_123_456_789))
    os.makedirs(p("moveme/inner"))
    _write(p("moveme/inner/file"), b"found through its identity")
    os.makedirs(p("emptydir"))
    _write(p("replaced"), b"the original")
    backdate(v.backing)


def backdate(root: str) -> None:
    """Give every object its own old mtime with nanoseconds (rsync skips same-second times)."""
    paths = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".shadowfs"]
        paths += [os.path.join(top, name) for name in dirs + files]
    for number, path in enumerate(sorted(paths, reverse=True) + [root]):
        if path.endswith("owned"):
            continue
        when = 1_600_000_000_000_000_000 + number * 1_000_003_001
        os.utime(path, ns=(when, when), follow_symlinks=False)


def change_rich_tree(v: Volume) -> None:
    """Changes after the snapshot, each captured first like the live mount does."""
    v.write("big", 10, b"Z" * 100)
    v.write("big", 2 * BLOCK_SIZE - 5, b"Y" * BLOCK_SIZE)  # spans two blocks, in the hole
    v.write("big", os.path.getsize(v.path("big")), b"appended")
    v.truncate("docs/a.txt", 3)
    v.unlink("docs/deep/a-link")
    v.unlink("gone.txt")
    v.rename("moveme", "moved")
    v.write("moved/inner/file", 0, b"FOUND")
    v.rmdir("emptydir")
    v.attr_change("owned", lambda path: os.chmod(path, 0o777))
    v.attr_change("owned", lambda path: os.chown(path, 1, 1))
    v.attr_change("owned", lambda path: os.utime(path, ns=(5, 5)))
    v.attr_change("docs/a.txt", lambda path: os.setxattr(path, "user.color", b"red"))
    v.attr_change("docs", lambda path: os.removexattr(path, "user.tag"))
    v.attr_change("private/acl.txt", lambda path: subprocess.run(["setfacl", "-b", path], check=True))
    v.create("newfile", b"born after")
    v.create("tmp-replacement", b"the replacement")
    v.rename("tmp-replacement", "replaced")
    v.unlink("docs/deep/sym")
    v.symlink("elsewhere", "docs/deep/sym")
    v.unlink("fifo")
    v.mkfifo("fifo2")
    v.mkdir("newdir")
    v.truncate("big", 3 * BLOCK_SIZE)


def assert_same(expected: dict, actual: dict, **kwargs: object) -> None:  # type: ignore[type-arg]
    problems = compare(expected, actual, **kwargs)  # type: ignore[arg-type]
    assert not problems, "\n".join(problems[:40])


def rich_world(workspace: Workspace) -> tuple[Volume, dict, dict, int]:  # type: ignore[type-arg]
    v = workspace.volume("data", 1)
    build_rich_tree(v)
    instant, inodes = manifest(v.backing)
    seq = v.take(SET_A)
    change_rich_tree(v)
    return v, instant, inodes, seq


# ---- layout ------------------------------------------------------------------------------------


def test_layout_sets_by_time_and_virtual_attrs(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    _write(v.path("f"), b"x")
    v.take(SET_B, WHEN)
    v.take(SET_A, WHEN)  # same instant, lower set id: gets the plain name
    v.take(SET_C, "2026-11-22T08:00:00Z")
    workspace.browser([v])
    mnt = workspace.mount
    assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_A, SET_B, SET_C])
    by_time = os.path.join(mnt, "by-time")
    assert sorted(os.listdir(by_time)) == [WHEN, WHEN + ".1", "2026-11-22T08:00:00Z"]
    assert os.readlink(os.path.join(by_time, WHEN)) == f"../{SET_A}"
    assert os.readlink(os.path.join(by_time, WHEN + ".1")) == f"../{SET_B}"
    assert os.listdir(os.path.join(by_time, "2026-11-22T08:00:00Z")) == ["data"]
    with open(os.path.join(by_time, WHEN, "data", "f"), "rb") as f:
        assert f.read() == b"x"
    created_ns = calendar.timegm(time.strptime(WHEN, "%Y-%m-%dT%H:%M:%SZ")) * 1_000_000_000
    for name in (SET_A, SET_B):
        st = os.lstat(os.path.join(mnt, name))
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_nlink) == (stat.S_IFDIR | 0o555, 0, 0, 3)
        assert st.st_mtime_ns == st.st_ctime_ns == created_ns
        assert os.listdir(os.path.join(mnt, name)) == ["data"]
    link = os.lstat(os.path.join(by_time, WHEN))
    assert stat.S_ISLNK(link.st_mode) and link.st_size == len(f"../{SET_A}")
    root = os.stat(mnt)
    assert (root.st_mode, root.st_nlink) == (stat.S_IFDIR | 0o555, 2 + 2 + 3)
    assert os.listxattr(mnt) == []
    with pytest.raises(OSError) as exc:
        os.getxattr(os.path.join(mnt, SET_A), "user.nothing")
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(FileNotFoundError):
        os.lstat(os.path.join(mnt, "no-such-set"))
    with pytest.raises(FileNotFoundError):
        os.lstat(os.path.join(mnt, SET_A, "no-such-volume"))
    vfs = os.statvfs(mnt)
    assert vfs.f_flag & os.ST_RDONLY and vfs.f_flag & os.ST_NOSUID and vfs.f_flag & os.ST_NODEV
    assert vfs.f_blocks == os.statvfs(v.backing).f_blocks


def test_two_volumes_in_one_set(workspace: Workspace) -> None:
    a = workspace.volume("alpha", 1)
    b = workspace.volume("beta", 7)
    _write(a.path("fa"), b"in alpha")
    _write(b.path("fb"), b"in beta")
    a.take(SET_A)
    b.take(SET_A)
    a.write("fa", 0, b"IN")
    b.unlink("fb")
    a.take(SET_B, "2026-11-22T00:00:00Z")  # a set of one volume
    a.write("fa", 0, b"XX")
    workspace.browser([a, b])
    mnt = workspace.mount
    assert sorted(os.listdir(os.path.join(mnt, SET_A))) == ["alpha", "beta"]
    assert os.listdir(os.path.join(mnt, SET_B)) == ["alpha"]
    assert os.stat(os.path.join(mnt, SET_A)).st_nlink == 4
    with open(os.path.join(mnt, SET_A, "alpha", "fa"), "rb") as f:
        assert f.read() == b"in alpha"
    with open(os.path.join(mnt, SET_A, "beta", "fb"), "rb") as f:
        assert f.read() == b"in beta"
    with open(os.path.join(mnt, SET_B, "alpha", "fa"), "rb") as f:
        assert f.read() == b"IN alpha"
    assert os.listdir(os.path.join(mnt, SET_A, "beta")) == ["fb"]
    ino_a = os.stat(os.path.join(mnt, SET_A, "alpha")).st_ino
    ino_b = os.stat(os.path.join(mnt, SET_A, "beta")).st_ino
    assert ino_a >> 52 == 1 and ino_b >> 52 == 7


# ---- content: everything as it was at the instant ----------------------------------------------


def test_snapshot_matches_the_instant(workspace: Workspace) -> None:
    v, instant, inodes, _ = rich_world(workspace)
    workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")
    seen, seen_inodes = manifest(root)
    assert_same(instant, seen, fields=ALL_FIELDS)
    assert link_groups(seen_inodes, seen) == link_groups(inodes, instant)
    assert link_groups(inodes, instant) == {frozenset({"docs/a.txt", "docs/deep/a-link", "a-link2"})}
    # spot checks that the comparison is not vacuous
    assert seen["docs/a.txt"].nlink == 3 and seen["docs/a.txt"].size == 600
    assert seen["moveme/inner/file"].digest == instant["moveme/inner/file"].digest
    assert "newfile" not in seen and "gone.txt" in seen and "emptydir" in seen
    assert stat.S_ISFIFO(seen["fifo"].mode) and stat.S_ISCHR(seen["null"].mode)
    assert stat.S_ISBLK(seen["loopdev"].mode) and seen["loopdev"].rdev == os.makedev(7, 200)
    owned = seen["owned"]
    assert owned.mode == stat.S_IFREG | 0o4750 and (owned.uid, owned.gid) == (1234, 5678)
    assert seen["owned"].mtime_ns == 1_234_567_890_123_456_789
    assert dict(seen["docs/a.txt"].xattrs)["user.color"] == b"blue"
    assert "system.posix_acl_access" in dict(seen["private/acl.txt"].xattrs)
    assert os.readlink(os.path.join(root, "docs/deep/sym")) == "../a.txt"
    with open(os.path.join(root, "replaced"), "rb") as f:
        assert f.read() == b"the original"
    # and the live tree really did change
    assert not os.path.exists(v.path("gone.txt")) and os.path.exists(v.path("moved/inner/file"))


def test_reads_at_odd_offsets(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    data = os.urandom(4 * BLOCK_SIZE + 321)
    _write(v.path("f"), data)
    v.take(SET_A)
    v.write("f", BLOCK_SIZE - 3, b"\xff" * (2 * BLOCK_SIZE))
    v.truncate("f", 1000)
    workspace.browser([v])
    path = os.path.join(workspace.mount, SET_A, "data", "f")
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in [(0, 10), (BLOCK_SIZE - 5, 10), (3 * BLOCK_SIZE + 7, BLOCK_SIZE),
                               (len(data) - 4, 100), (len(data), 10), (len(data) + 5000, 10)]:
            assert os.pread(fd, length, offset) == data[offset:offset + length]
    finally:
        os.close(fd)
    assert os.stat(path).st_size == len(data)


def test_rsync_out_of_the_snapshot(workspace: Workspace) -> None:
    v, instant, inodes, _ = rich_world(workspace)
    workspace.browser([v])
    dest = os.path.join(workspace.base, "restore")
    source = os.path.join(workspace.mount, SET_A, "data") + "/"
    # --modify-window=-1: rsync otherwise takes times within the same second as equal, and
    # leaves a directory it made in that second with the time its own writes gave it
    result = subprocess.run(["rsync", "-aHAX", "--modify-window=-1", "--numeric-ids", source, dest + "/"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    copied, copied_inodes = manifest(dest)
    assert_same(instant, copied, fields=COPY_FIELDS + ("size", "nlink"),
                dir_fields=("kind", "mode", "uid", "gid", "mtime_ns", "xattrs"))
    assert link_groups(copied_inodes, copied) == link_groups(inodes, instant)


def test_damaged_objects_fail_with_eio_and_the_rest_reads_fine(workspace: Workspace) -> None:
    """Design §9.3 through a real mount: a damaged file or directory fails every look with EIO, its
    name stays listed (rsync reports it instead of leaving it out; a backup fails naming it), and
    the rest reads as it was."""
    v = workspace.volume("data", 1)
    v.mkdir("d")
    v.create("d/f", b"one")
    v.create("d/g", b"two")
    v.mkdir("lost")
    v.create("lost/h", b"three")
    v.create("keep", b"k" * 100_000)
    instant, _ = manifest(v.backing)
    v.take(SET_A, "2026-01-01T00:00:00Z")
    with v.area.write() as txn:
        for rel in ("d/f", "d/g", "lost"):
            assert v.area.mark_damaged(txn, os.lstat(v.path(rel)).st_ino, rel, "test", WHEN)
    v.take(SET_B, "2026-01-02T00:00:00Z")  # after the marks: not damaged
    workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")

    def eio(call, *args) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(OSError) as caught:
            call(*args)
        assert caught.value.errno == errno.EIO, (call, args)

    eio(os.stat, os.path.join(root, "d", "g"))  # looked up before any listing
    assert sorted(os.listdir(os.path.join(root, "d"))) == ["f", "g"]
    eio(os.stat, os.path.join(root, "d", "f"))  # listed first: the listing's attributes are not kept
    eio(os.lstat, os.path.join(root, "d", "f"))
    eio(open, os.path.join(root, "d", "f"), "rb")
    eio(os.listdir, os.path.join(root, "lost"))
    eio(os.stat, os.path.join(root, "lost", "h"))
    with open(os.path.join(root, "keep"), "rb") as f:
        assert f.read() == b"k" * 100_000
    assert os.stat(os.path.join(root, "d")).st_mtime_ns == instant["d"].mtime_ns
    later = os.path.join(workspace.mount, SET_B, "data")
    assert Path(later, "d", "f").read_bytes() == b"one" and os.listdir(os.path.join(later, "lost")) == ["h"]
    dest = os.path.join(workspace.base, "copy")
    result = subprocess.run(["rsync", "-a", root + "/", dest + "/"], capture_output=True, text=True)
    assert result.returncode == 23, (result.returncode, result.stderr)  # partial transfer, errors named
    assert "d/f" in result.stderr and "Input/output error" in result.stderr, result.stderr
    assert Path(dest, "keep").read_bytes() == b"k" * 100_000
    assert not os.path.exists(os.path.join(dest, "d", "f"))
    store = os.path.join(workspace.base, "media")
    with pytest.raises(BackupJobError, match="^data:d/f: cannot be read from the snapshot: Input/output"):
        backup(BackupRequest(store, {"data": VolumeSource(root)}, "full"))
    assert backup(BackupRequest(store, {"data": VolumeSource(later)}, "full"))  # the later set backs up


# ---- identity ----------------------------------------------------------------------------------


def test_inode_numbers_stable_and_shared_by_hard_links(workspace: Workspace) -> None:
    v, instant, inodes, seq = rich_world(workspace)
    browser = workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")
    first, first_inodes = manifest(root)
    # node id = (volume index << 52) | (seq << 32) | backing inode, whatever was renamed since
    for rel, ino in inodes.items():
        assert first_inodes[rel] == (1 << 52) | (seq << 32) | ino, rel
    assert os.stat(root).st_ino == (1 << 52) | (seq << 32) | os.stat(v.backing).st_ino
    def virtual_inodes() -> list[int]:
        return [os.lstat(os.path.join(workspace.mount, name)).st_ino
                for name in (SET_A, "by-time", f"by-time/{WHEN}")]

    virtual = virtual_inodes()
    with open("/proc/sys/vm/drop_caches", "w") as f:  # forget dentries: the kernel must look up again
        f.write("2\n")
    _, again = manifest(root)
    assert again == first_inodes
    browser.stop()
    workspace.browser([v])
    _, restarted = manifest(root)
    assert restarted == first_inodes
    assert virtual_inodes() == virtual


def test_each_snapshot_shows_its_own_instant(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    v.mkdir("d")
    v.create("d/f", b"one")
    v.create("keep", b"k")
    first, _ = manifest(v.backing)
    s1 = v.take(SET_A, "2026-01-01T00:00:00Z")
    v.write("d/f", 0, b"TWO")
    v.rename("d", "d2")
    v.create("d2/g", b"new in 2")
    second, _ = manifest(v.backing)
    s2 = v.take(SET_B, "2026-01-02T00:00:00Z")
    v.unlink("d2/f")
    v.unlink("d2/g")
    v.rmdir("d2")
    v.write("keep", 0, b"K")
    workspace.browser([v])
    mnt = workspace.mount
    assert_same(first, manifest(os.path.join(mnt, SET_A, "data"))[0])
    assert_same(second, manifest(os.path.join(mnt, SET_B, "data"))[0])
    ino_1 = os.stat(os.path.join(mnt, SET_A, "data", "d", "f")).st_ino
    ino_2 = os.stat(os.path.join(mnt, SET_B, "data", "d2", "f")).st_ino
    assert ino_1 & 0xFFFFFFFF == ino_2 & 0xFFFFFFFF  # one backing object ...
    assert (ino_1 >> 32) & 0xFFFFF == s1 and (ino_2 >> 32) & 0xFFFFF == s2  # ... two snapshots


def test_big_directory_lookup_counts_and_parallel_reads(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    os.makedirs(v.path("many"))
    names = [f"entry-{i:05d}-" + "x" * 80 for i in range(3000)]
    for number, name in enumerate(names):
        _write(v.path(f"many/{name}"), name.encode() * (number % 7))
    instant, _ = manifest(v.backing)
    v.take(SET_A)
    for name in names[::3]:
        v.unlink(f"many/{name}")
    for number in range(500):
        v.create(f"many/new-{number}", b"new")
    v.write(f"many/{names[1]}", 0, b"changed")
    browser = workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")
    assert sorted(os.listdir(os.path.join(root, "many"))) == names  # many readdir batches
    seen, _ = manifest(root)
    assert_same(instant, seen)
    with ThreadPoolExecutor(8) as pool:
        hashes = pool.map(lambda n: _sha(os.path.join(root, "many", n)), names)
        digests = dict(zip(names, hashes, strict=True))
    assert digests == {name: instant[f"many/{name}"].digest for name in names}
    assert browser.call({"op": "status"})["known_nodes"] > 0  # (others may drop caches meanwhile)
    with open("/proc/sys/vm/drop_caches", "w") as f:  # the kernel forgets: every count returns to zero
        f.write("3\n")
    assert wait_for(lambda: browser.call({"op": "status"})["known_nodes"] < 10, timeout=10)


# ---- nothing can be changed --------------------------------------------------------------------


def test_every_change_is_erofs(workspace: Workspace) -> None:
    v, _, _, _ = rich_world(workspace)
    workspace.browser([v])
    mnt = workspace.mount
    root = os.path.join(mnt, SET_A, "data")
    f = os.path.join(root, "docs/a.txt")
    d = os.path.join(root, "docs")
    attempts = {
        "open O_WRONLY": lambda: os.open(f, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(f, os.O_RDWR),
        "open O_TRUNC": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(os.path.join(root, "new"), os.O_WRONLY | os.O_CREAT, 0o644),
        "create at top": lambda: os.open(os.path.join(mnt, "new"), os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(os.path.join(d, "newdir")),
        "mkdir at top": lambda: os.mkdir(os.path.join(mnt, "newset")),
        "unlink": lambda: os.unlink(f),
        "unlink symlink at top": lambda: os.unlink(os.path.join(mnt, "by-time", WHEN)),
        "rmdir": lambda: os.rmdir(os.path.join(root, "emptydir")),
        "rmdir set": lambda: os.rmdir(os.path.join(mnt, SET_A)),
        "rename": lambda: os.rename(f, os.path.join(d, "b.txt")),
        "rename set": lambda: os.rename(os.path.join(mnt, SET_A), os.path.join(mnt, "x")),
        "link": lambda: os.link(f, os.path.join(d, "c.txt")),
        "symlink": lambda: os.symlink("a.txt", os.path.join(d, "s")),
        "chmod": lambda: os.chmod(f, 0o777),
        "chmod set": lambda: os.chmod(os.path.join(mnt, SET_A), 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (1, 1)),
        "truncate": lambda: os.truncate(f, 0),
        "setxattr": lambda: os.setxattr(f, "user.color", b"green"),
        "setxattr new": lambda: os.setxattr(f, "user.other", b"x"),
        "removexattr": lambda: os.removexattr(f, "user.color"),
        "mkfifo": lambda: os.mkfifo(os.path.join(d, "fifo")),
        "mknod": lambda: os.mknod(os.path.join(d, "dev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
    }
    wrong = {}
    for name, attempt in attempts.items():
        try:
            result = attempt()
        except OSError as exc:
            if exc.errno != errno.EROFS:
                wrong[name] = errno.errorcode.get(exc.errno or 0, exc.errno)
        else:
            if isinstance(result, int):
                os.close(result)
            wrong[name] = "succeeded"
    assert wrong == {}
    with open(f, "rb") as fh:  # reading still works, and nothing changed
        assert fh.read() == b"alpha\n" * 100


def test_non_owner_refused_where_the_snapshot_modes_refuse(workspace: Workspace) -> None:
    v, _, _, _ = rich_world(workspace)
    workspace.browser([v])
    root = os.path.join(workspace.mount, SET_A, "data")

    def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                               *argv], capture_output=True, text=True)

    assert as_nobody("cat", os.path.join(root, "private/shared")).stdout == "everyone"
    denied = as_nobody("cat", os.path.join(root, "private/secret"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # the ACL at the instant grants nobody read access (it was removed in the live tree since)
    granted = as_nobody("cat", os.path.join(root, "private/acl.txt"))
    assert granted.stdout == "readable by nobody through an ACL", granted.stderr
    closed = as_nobody("ls", os.path.join(root, "closed"))
    assert closed.returncode != 0 and "Permission denied" in closed.stderr
    assert as_nobody("ls", os.path.join(workspace.mount, SET_A)).stdout.split() == ["data"]
    # root may read everything
    with open(os.path.join(root, "private/secret"), "rb") as f:
        assert f.read() == b"root only"


# ---- sets come and go without a message --------------------------------------------------------


def test_sets_appear_and_vanish_without_a_message(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    data = os.urandom(64 * BLOCK_SIZE)
    _write(v.path("f"), data)
    workspace.browser([v])
    mnt = workspace.mount
    assert os.listdir(mnt) == ["by-time", "by-volume"]
    seq = v.take(SET_A)
    assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_A])
    v.write("f", 0, b"changed" * 100_000)
    path = os.path.join(mnt, SET_A, "data", "f")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == data[:100]
        cwd = os.open(os.path.join(mnt, SET_A, "data"), os.O_RDONLY | os.O_DIRECTORY)
        v.delete(seq)
        assert os.listdir(mnt) == ["by-time", "by-volume"]
        assert os.listdir(os.path.join(mnt, "by-time")) == []
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(mnt, SET_A))
        with pytest.raises(OSError) as exc:
            os.pread(fd, 100, 40 * BLOCK_SIZE)  # not cached yet: must not be answered
        assert exc.value.errno == errno.ESTALE
        with pytest.raises(OSError) as exc:
            os.listdir(cwd)
        assert exc.value.errno == errno.ESTALE
        os.close(cwd)
    finally:
        os.close(fd)
    seq2 = v.take(SET_B)
    assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_B])
    with open(os.path.join(mnt, SET_B, "data", "f"), "rb") as f:
        assert f.read(7) == b"changed"
    assert seq2 > seq


def test_diff_area_created_after_the_volumes_message(workspace: Workspace) -> None:
    backing = os.path.join(workspace.base, "late-backing")
    os.makedirs(backing)
    area = os.path.join(workspace.base, "late-area")
    browser = workspace.browser()
    assert browser.set_volumes([("late", 3, area, backing)])["ok"]
    assert os.listdir(workspace.mount) == ["by-time", "by-volume"]
    v = Volume("late", 3, backing, area)
    workspace.volumes.append(v)
    _write(v.path("f"), b"late")
    v.take(SET_C)
    assert wait_for(lambda: SET_C in os.listdir(workspace.mount), timeout=10)
    with open(os.path.join(workspace.mount, SET_C, "late", "f"), "rb") as f:
        assert f.read() == b"late"


def test_volumes_replaced_and_removed(workspace: Workspace) -> None:
    a = workspace.volume("alpha", 1)
    b = workspace.volume("beta", 2)
    _write(a.path("f"), b"a" * (8 << 20))
    a.take(SET_A)
    b.take(SET_B, "2026-11-22T00:00:00Z")
    browser = workspace.browser([a])
    mnt = workspace.mount
    assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_A])
    fd = os.open(os.path.join(mnt, SET_A, "alpha", "f"), os.O_RDONLY)
    try:
        assert browser.set_volumes([a.spec, b.spec])["ok"]  # alpha kept, beta added
        assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_A, SET_B])
        assert os.pread(fd, 10, 0) == b"a" * 10
        assert browser.set_volumes([b.spec])["ok"]
        assert sorted(os.listdir(mnt)) == sorted(["by-time", "by-volume", SET_B])
        with pytest.raises(OSError) as exc:
            os.pread(fd, 10, 6 << 20)  # not cached; the open file's volume is gone: never a wrong answer
        assert exc.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    status = browser.call({"op": "status"})
    assert status["ok"] and status["sets"] == 1
    assert [vol["name"] for vol in status["volumes"]] == ["beta"]


# ---- the control channel -----------------------------------------------------------------------


def test_bad_requests_get_error_replies(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    browser = workspace.browser([v])
    fd = os.open(v.backing, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def one(name: str, index: int, area: str) -> dict[str, object]:
            return {"op": "volumes", "volumes": [{"name": name, "index": index, "diff_area": area}]}

        bad: list[tuple[dict[str, object], list[int]]] = [
            (one("x", 1, v.diff_area), []),  # no descriptor
            ({"op": "volumes", "volumes": "nope"}, []),
            (one("x", 0, v.diff_area), [fd]),
            (one("x", 4096, v.diff_area), [fd]),
            (one("a/b", 1, v.diff_area), [fd]),
            (one("..", 1, v.diff_area), [fd]),
            (one("x", 1, "relative"), [fd]),
            ({"op": "frobnicate"}, []),
        ]
        for request, fds in bad:
            reply = browser.call(request, fds)
            assert reply["ok"] is False and reply["error"], (request, reply)
        reply = browser.call({"op": "volumes", "volumes": [
            {"name": "x", "index": 1, "diff_area": v.diff_area},
            {"name": "y", "index": 1, "diff_area": v.diff_area + "2"}]}, [fd, fd])
        assert reply["ok"] is False and "duplicate" in reply["error"]
    finally:
        os.close(fd)
    status = browser.call({"op": "status"})
    assert status["ok"] and [vol["name"] for vol in status["volumes"]] == ["data"]


@pytest.mark.parametrize("how", ["eof", "sigterm", "sigint"])
def test_process_unmounts_and_exits_cleanly(workspace: Workspace, how: str) -> None:
    v = workspace.volume("data", 1)
    browser = workspace.browser([v])
    assert browser.proc is not None
    if how == "eof":
        assert browser.stop() == 0
    else:
        browser.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        assert browser.proc.wait(15) == 0
    assert not mounts.is_fuse_mount(workspace.mount)


def test_external_unmount_ends_the_process(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    browser = workspace.browser([v])
    assert browser.proc is not None
    subprocess.run(["fusermount3", "-u", workspace.mount], check=True)
    assert browser.proc.wait(15) == 0
    time.sleep(0.1)
    assert not mounts.is_fuse_mount(workspace.mount)


def test_restart_after_a_killed_browser(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    _write(v.path("f"), b"survives")
    v.take(SET_A)
    first = workspace.browser([v])
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    with pytest.raises(OSError) as exc:
        os.listdir(workspace.mount)
    assert exc.value.errno == errno.ENOTCONN  # the dead mount is still there
    workspace.browser([v])  # clears it and mounts again
    with open(os.path.join(workspace.mount, SET_A, "data", "f"), "rb") as f:
        assert f.read() == b"survives"


def test_a_live_mount_is_not_stacked_on(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    workspace.browser([v])
    second = BrowserProcess(workspace.mount, workspace.log_path)
    with pytest.raises(frames.ChannelClosed):
        second.start()
    assert second.proc is not None and second.proc.wait(15) == 1
    assert second.sock is not None
    second.sock.close()  # never second.stop(): it would unmount the first browser's mount
    assert os.listdir(workspace.mount) == ["by-time", "by-volume"]  # the first one still serves


def test_volumes_message_again_finds_a_diff_area_made_meanwhile_at_once(workspace: Workspace) -> None:
    """The daemon sends the volume list when the browser starts (a new volume's mount process may
    not have made its diff area yet) and again once that mount process is ready: from then on
    its sets show without the browser's retry delay (a snapshot taken right away is readable)."""
    backing = os.path.join(workspace.base, "late-backing")
    os.makedirs(backing)
    area = os.path.join(workspace.base, "late-area")
    browser = workspace.browser()
    assert browser.set_volumes([("late", 3, area, backing)])["ok"]
    assert os.listdir(workspace.mount) == ["by-time", "by-volume"]  # no diff area yet: retried in a second
    v = Volume("late", 3, backing, area)
    workspace.volumes.append(v)
    _write(v.path("f"), b"late")
    v.take(SET_C)
    assert browser.set_volumes([("late", 3, area, backing)])["ok"]
    assert SET_C in os.listdir(workspace.mount)
    with open(os.path.join(workspace.mount, SET_C, "late", "f"), "rb") as f:
        assert f.read() == b"late"


def test_sequence_beyond_node_id_space_is_eoverflow(workspace: Workspace) -> None:
    v = workspace.volume("data", 1)
    _write(v.path("f"), b"x")
    with v.area.write() as txn:  # as if a million snapshots had been taken
        txn.put(META_NEXT_SEQ, u64(1 << 20), db=v.area.meta)
    v.take(SET_A)
    workspace.browser([v])
    assert sorted(os.listdir(workspace.mount)) == sorted(["by-time", "by-volume", SET_A])
    assert os.listdir(os.path.join(workspace.mount, SET_A)) == []  # no node id to list it with
    with pytest.raises(OSError) as exc:
        os.stat(os.path.join(workspace.mount, SET_A, "data"))
    assert exc.value.errno == errno.EOVERFLOW
