"""The live mount on real FUSE mounts: pass-through behaviour and the capture rule.

Each test runs `python -m shadowfs.live.process` (fixtures in livefs_fixtures.py),
changes files through the mount, takes snapshots over the control channel,
and reads the snapshots back with `snapview` on a read-only diff area.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import threading
import time
from typing import Any

import pytest

from shadowfs.diffarea.schema import BLOCK_SIZE
from shadowfs.ipc import frames
from shadowfs.linux import mounts, syscalls
from shadowfs.live.protection import ProtectionRecord
from tests.mount import livefs_fixtures
from tests.mount.livefs_fixtures import LiveVolume, MountClient

volume = livefs_fixtures.volume
separate_volume = livefs_fixtures.separate_volume

pytestmark = pytest.mark.fuse

NOBODY = 65534


def write(path: str, data: bytes, offset: int | None = None) -> None:
    if offset is None:
        with open(path, "wb") as f:
            f.write(data)
    else:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def as_nobody(script: str, gid: int = NOBODY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups", "--",
                           "sh", "-c", script], capture_output=True, text=True, check=False)


# ---- pass-through --------------------------------------------------------------------------


def test_passthrough_basics(volume: LiveVolume) -> None:
    p = volume.path
    write(p("f"), b"hello world")
    assert read(p("f")) == b"hello world"
    os.mkdir(p("d"), 0o750)
    assert stat.S_IMODE(os.stat(p("d")).st_mode) == 0o750
    os.rename(p("f"), p("d", "g"))
    assert sorted(os.listdir(volume.mount)) == ["d"]
    assert os.listdir(p("d")) == ["g"]
    os.symlink("g", p("d", "s"))
    assert os.readlink(p("d", "s")) == "g"
    assert read(p("d", "s")) == b"hello world"
    os.link(p("d", "g"), p("h"))
    assert os.stat(p("h")).st_nlink == 2
    assert os.stat(p("h")).st_ino == os.stat(p("d", "g")).st_ino
    os.truncate(p("h"), 5)
    assert read(p("d", "g")) == b"hello"
    os.chmod(p("h"), 0o600)
    assert stat.S_IMODE(os.stat(p("d", "g")).st_mode) == 0o600
    os.setxattr(p("h"), "user.k", b"v")
    assert os.getxattr(p("d", "g"), "user.k") == b"v"
    assert "user.k" in os.listxattr(p("h"))
    os.removexattr(p("h"), "user.k")
    with pytest.raises(OSError) as info:
        os.getxattr(p("h"), "user.k")
    assert info.value.errno == errno.ENODATA
    os.utime(p("h"), ns=(1_000_000_000_123, 2_000_000_000_456))
    st = os.stat(p("h"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    os.mkfifo(p("fifo"))
    assert stat.S_ISFIFO(os.stat(p("fifo")).st_mode)
    with pytest.raises(OSError) as info:
        os.rmdir(p("d"))
    assert info.value.errno == errno.ENOTEMPTY
    for name in ("d/g", "d/s", "h", "fifo"):
        os.unlink(p(name))
    os.rmdir(p("d"))
    assert os.listdir(volume.mount) == []
    vfs = os.statvfs(volume.mount)
    assert vfs.f_blocks > 0 and vfs.f_namemax == 255
    # The backing directory saw every change (inode numbers are the backing ones).
    write(p("x"), b"1")
    assert os.stat("x", dir_fd=volume.backing_fd).st_ino == os.stat(p("x")).st_ino


def test_readdir_large_and_stable(volume: LiveVolume) -> None:
    names = {f"file-{i:04d}-{'x' * 40}" for i in range(600)}
    for name in names:
        os.close(os.open(volume.path(name), os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(volume.mount)) == names
    # Removing entries while a listing is in progress never skips or repeats others.
    seen = []
    with os.scandir(volume.mount) as entries:
        for i, entry in enumerate(entries):
            seen.append(entry.name)
            if i == 10:
                for name in sorted(names)[300:310]:
                    os.unlink(volume.path(name))
    assert len(seen) == len(set(seen))
    assert set(seen) >= names - set(sorted(names)[300:310])


def test_unlink_open_file_and_keep_writing(volume: LiveVolume) -> None:
    path = volume.path("f")
    write(path, b"old content")
    # Open and unlinked before the snapshot: invisible to it, changes need no capture.
    hidden = os.open(volume.path("hidden"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(hidden, b"hidden data")
    os.unlink(volume.path("hidden"))
    assert volume.client is not None
    seq = volume.client.snapshot()
    os.pwrite(hidden, b"HIDDEN", 0)
    os.ftruncate(hidden, 2)
    os.fchmod(hidden, 0o600)
    os.setxattr(hidden, "user.k", b"v")
    os.close(hidden)
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not os.path.exists(path)
        os.pwrite(fd, b"NEW", 0)
        os.pwrite(fd, b"more", 11)
        assert os.pread(fd, 100, 0) == b"NEW content" + b"more"
        assert os.fstat(fd).st_size == 15
        os.ftruncate(fd, 3)
        os.fchmod(fd, 0o600)
        os.setxattr(fd, "user.k", b"v")
        assert (os.fstat(fd).st_size, stat.S_IMODE(os.fstat(fd).st_mode)) == (3, 0o600)
    finally:
        os.close(fd)
    with volume.reader(seq) as snap:
        assert snap.read("f") == b"old content"


def test_hidden_directory(volume: LiveVolume) -> None:
    assert ".shadowfs" not in os.listdir(volume.mount)
    assert not os.path.lexists(volume.path(".shadowfs"))
    assert os.stat(volume.mount).st_nlink == 2  # no subdirectory to see
    os.mkdir(volume.path("one"))
    assert os.stat(volume.mount).st_nlink == 3
    os.rmdir(volume.path("one"))
    with pytest.raises(OSError) as info:
        os.mkdir(volume.path(".shadowfs"))
    assert info.value.errno in (errno.EPERM, errno.EACCES)
    write(volume.path("f"), b"x")
    with pytest.raises(OSError) as info:
        os.rename(volume.path("f"), volume.path(".shadowfs"))
    assert info.value.errno in (errno.EPERM, errno.EACCES)
    with pytest.raises(OSError):
        os.symlink("x", volume.path(".shadowfs"))
    with pytest.raises(OSError):
        os.link(volume.path("f"), volume.path(".shadowfs"))
    with pytest.raises(FileNotFoundError):
        os.unlink(volume.path(".shadowfs"))
    # Elsewhere the name is an ordinary one.
    os.mkdir(volume.path("sub"))
    os.mkdir(volume.path("sub", ".shadowfs"))
    assert os.listdir(volume.path("sub")) == [".shadowfs"]
    assert volume.graveyard() == []


# ---- the capture rule ----------------------------------------------------------------------


def test_overwrite_keeps_old_blocks(volume: LiveVolume) -> None:
    data = os.urandom(3 * BLOCK_SIZE + 1000)
    write(volume.path("f"), data)
    seq = volume.client.snapshot()
    write(volume.path("f"), b"Z" * 10, BLOCK_SIZE + 5)
    write(volume.path("f"), b"Y" * 10, 5)
    new = bytearray(data)
    new[BLOCK_SIZE + 5:BLOCK_SIZE + 15] = b"Z" * 10
    new[5:15] = b"Y" * 10
    assert read(volume.path("f")) == bytes(new)
    seq2 = volume.client.snapshot()
    write(volume.path("f"), b"W" * 10, 5)
    with volume.reader(seq) as snap:
        assert snap.read("f") == data
    with volume.reader(seq2) as snap:
        assert snap.read("f") == bytes(new)
    # Only the two touched blocks of the first snapshot and one of the second were stored.
    assert 3 * BLOCK_SIZE < volume.used_bytes() < 4 * BLOCK_SIZE


def test_append_stores_no_blocks(volume: LiveVolume) -> None:
    write(volume.path("f"), b"a" * 100)
    seq = volume.client.snapshot()
    with open(volume.path("f"), "ab") as f:
        for _ in range(20):
            f.write(os.urandom(BLOCK_SIZE))
    with open(volume.path("new"), "wb") as f:  # born after the snapshot: free too
        f.write(os.urandom(4 * BLOCK_SIZE))
    # The first block holds the old tail and is captured once; nothing else is.
    assert volume.used_bytes() < 2000
    with volume.reader(seq) as snap:
        assert snap.read("f") == b"a" * 100
        assert not snap.exists("new")
        assert snap.listdir() == ["f"]


def test_truncate_down_and_up(volume: LiveVolume) -> None:
    data = os.urandom(4 * BLOCK_SIZE)
    write(volume.path("f"), data)
    write(volume.path("g"), data)
    write(volume.path("h"), data)
    seq = volume.client.snapshot()
    os.truncate(volume.path("f"), BLOCK_SIZE + 10)
    os.truncate(volume.path("f"), 6 * BLOCK_SIZE)
    assert read(volume.path("f")) == data[:BLOCK_SIZE + 10] + bytes(5 * BLOCK_SIZE - 10)
    with open(volume.path("g"), "r+b") as f:
        f.truncate(10)
    with open(volume.path("h"), "wb") as f:  # O_TRUNC
        f.write(b"short")
    assert read(volume.path("h")) == b"short"
    with volume.reader(seq) as snap:
        assert snap.read("f") == data
        assert snap.read("g") == data
        assert snap.read("h") == data
        assert snap.attr("f").size == 4 * BLOCK_SIZE


def test_unlink_and_graveyard(volume: LiveVolume) -> None:
    write(volume.path("f"), b"content of f")
    write(volume.path("two"), b"linked")
    os.link(volume.path("two"), volume.path("two-b"))
    ino = os.stat(volume.path("f")).st_ino
    seq = volume.client.snapshot()
    write(volume.path("born"), b"after")
    os.unlink(volume.path("f"))
    os.unlink(volume.path("two"))
    os.unlink(volume.path("born"))
    assert volume.graveyard() == [str(ino)]  # not "two" (another name left), not "born"
    with volume.reader(seq) as snap:
        assert snap.read("f") == b"content of f"
        assert snap.ino("f") == ino
        assert snap.attr("two").nlink == 2
        assert snap.read("two") == b"linked"
        assert sorted(snap.listdir()) == ["f", "two", "two-b"]
    os.unlink(volume.path("two-b"))  # now its last name: buried
    assert len(volume.graveyard()) == 2
    volume.client.call("delete", seq=seq)
    assert volume.graveyard() == []


def test_rename_files_and_directories(volume: LiveVolume) -> None:
    p = volume.path
    os.makedirs(p("a", "inner"))
    write(p("a", "inner", "x"), b"x-data")
    write(p("a", "y"), b"y-data")
    write(p("target"), b"replaced")
    os.mkdir(p("emptydir"))
    write(p("e1"), b"one")
    write(p("e2"), b"two")
    x_ino = os.stat(p("a", "inner", "x")).st_ino
    target_ino = os.stat(p("target")).st_ino
    empty_ino = os.stat(p("emptydir")).st_ino
    seq = volume.client.snapshot()
    os.rename(p("a", "inner"), p("moved"))             # a directory, to another parent
    os.rename(p("a", "y"), p("target"))                # over an existing file (its last name)
    os.mkdir(p("newdir"))
    os.rename(p("newdir"), p("emptydir"))              # over an existing empty directory
    syscalls.renameat2(syscalls.AT_FDCWD, os.fsencode(p("e1")), syscalls.AT_FDCWD, os.fsencode(p("e2")),
                     syscalls.RENAME_EXCHANGE)
    with pytest.raises(FileExistsError):
        syscalls.renameat2(syscalls.AT_FDCWD, os.fsencode(p("e1")), syscalls.AT_FDCWD,
                         os.fsencode(p("e2")), syscalls.RENAME_NOREPLACE)
    with pytest.raises(OSError) as info:
        os.rename(p("moved"), p("target"))
    assert info.value.errno == errno.ENOTDIR
    write(p("moved", "z"), b"z")
    with pytest.raises(OSError) as info:
        os.rename(p("a"), p("moved"))
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    assert read(p("target")) == b"y-data"
    assert (read(p("e1")), read(p("e2"))) == (b"two", b"one")
    assert sorted(volume.graveyard()) == sorted([str(target_ino), str(empty_ino)])
    with volume.reader(seq) as snap:
        assert sorted(snap.listdir()) == ["a", "e1", "e2", "emptydir", "target"]
        assert sorted(snap.listdir("a")) == ["inner", "y"]
        assert snap.listdir("a/inner") == ["x"]
        assert snap.ino("a/inner/x") == x_ino
        assert snap.read("a/inner/x") == b"x-data"
        assert snap.read("target") == b"replaced"
        assert snap.ino("emptydir") == empty_ino
        assert snap.listdir("emptydir") == []
        assert (snap.read("e1"), snap.read("e2")) == (b"one", b"two")


def test_link_symlink_fifo_mkdir_rmdir(volume: LiveVolume) -> None:
    p = volume.path
    write(p("f"), b"data")
    os.mkdir(p("gone"))
    os.symlink("old-target", p("sl"))
    gone_ino = os.stat(p("gone")).st_ino
    sl_ino = os.lstat(p("sl")).st_ino
    seq = volume.client.snapshot()
    os.link(p("f"), p("f2"))
    os.symlink("f", p("s"))
    os.mkfifo(p("fifo"), 0o640)
    os.mkdir(p("newdir"))
    os.rmdir(p("gone"))
    os.unlink(p("sl"))
    os.symlink("new-target", p("sl"))
    os.mkdir(p("short"))
    os.rmdir(p("short"))  # born after the snapshot: really removed
    assert os.stat(p("f")).st_nlink == 2
    assert volume.graveyard() == sorted([str(gone_ino), str(sl_ino)])
    with volume.reader(seq) as snap:
        assert sorted(snap.listdir()) == ["f", "gone", "sl"]
        assert snap.attr("f").nlink == 1
        assert snap.readlink("sl") == b"old-target"
        assert snap.listdir("gone") == []
        assert snap.ino("gone") == gone_ino
    seq2 = volume.client.snapshot()
    with volume.reader(seq2) as snap:
        assert sorted(snap.listdir()) == ["f", "f2", "fifo", "newdir", "s", "sl"]
        assert stat.S_ISFIFO(snap.attr("fifo").mode)
        assert stat.S_IMODE(snap.attr("fifo").mode) == 0o640
        assert snap.readlink("s") == b"f"
        assert snap.attr("f2").nlink == 2


def test_attribute_changes(volume: LiveVolume) -> None:
    p = volume.path
    write(p("f"), b"data")
    os.mkdir(p("d"))
    os.chmod(p("f"), 0o644)
    os.setxattr(p("f"), "user.keep", b"1")
    os.setxattr(p("f"), "user.gone", b"2")
    os.utime(p("f"), ns=(5_000_000_000, 6_000_000_000))
    before = os.stat(p("f"))
    seq = volume.client.snapshot()
    os.chmod(p("f"), 0o4700)
    os.chown(p("f"), 1234, 5678)
    os.utime(p("f"))  # UTIME_NOW
    os.setxattr(p("f"), "user.keep", b"changed")
    os.setxattr(p("f"), "user.new", b"3")
    os.removexattr(p("f"), "user.gone")
    os.chmod(p("d"), 0o1777)
    after = os.stat(p("f"))
    assert (after.st_uid, after.st_gid) == (1234, 5678)
    assert abs(after.st_mtime - time.time()) < 5
    with volume.reader(seq) as snap:
        record = snap.attr("f")
        assert stat.S_IMODE(record.mode) == 0o644
        assert (record.uid, record.gid) == (0, 0)
        assert (record.atime_ns, record.mtime_ns) == (5_000_000_000, 6_000_000_000)
        assert record.ctime_ns == before.st_ctime_ns
        assert record.xattrs == {b"user.keep": b"1", b"user.gone": b"2"}
        assert stat.S_IMODE(snap.attr("d").mode) == 0o755


# ---- ownership and permissions ---------------------------------------------------------------


def test_ownership_of_new_objects(volume: LiveVolume) -> None:
    p = volume.path
    os.mkdir(p("pub"))
    os.chmod(p("pub"), 0o777)
    result = as_nobody(f"umask 027 && echo hi > {p('pub', 'file')} && mkdir {p('pub', 'dir')} && "
                       f"ln -s file {p('pub', 'link')} && mkfifo {p('pub', 'fifo')}")
    assert result.returncode == 0, result.stderr
    for name, mode in (("file", 0o640), ("dir", 0o750), ("fifo", 0o640)):
        st = os.stat(p("pub", name))
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
        assert stat.S_IMODE(st.st_mode) == mode, name
    st = os.lstat(p("pub", "link"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    # setgid directory: new objects take its group, new directories its setgid bit
    os.mkdir(p("sg"))
    os.chown(p("sg"), 0, 4321)
    os.chmod(p("sg"), 0o2777)
    result = as_nobody(f"echo hi > {p('sg', 'file')} && mkdir {p('sg', 'dir')}")
    assert result.returncode == 0, result.stderr
    assert os.stat(p("sg", "file")).st_gid == 4321
    st = os.stat(p("sg", "dir"))
    assert (st.st_uid, st.st_gid) == (NOBODY, 4321)
    assert st.st_mode & stat.S_ISGID


def test_permission_checks(volume: LiveVolume) -> None:
    p = volume.path
    write(p("private"), b"secret")
    os.chmod(p("private"), 0o600)
    write(p("readonly"), b"ro")
    os.chmod(p("readonly"), 0o644)
    assert as_nobody(f"cat {p('private')}").returncode != 0
    assert as_nobody(f"echo x >> {p('readonly')}").returncode != 0
    assert as_nobody(f"cat {p('readonly')}").returncode == 0
    assert as_nobody(f"rm -f {p('readonly')}").returncode != 0  # root's directory
    assert as_nobody(f"chmod 777 {p('readonly')}").returncode != 0
    assert read(p("readonly")) == b"ro"
    os.mkdir(p("sticky"))
    os.chmod(p("sticky"), 0o1777)
    write(p("sticky", "roots"), b"r")
    os.chmod(p("sticky", "roots"), 0o666)
    assert as_nobody(f"rm -f {p('sticky', 'roots')}").returncode != 0
    # POSIX ACLs are enforced by the kernel (enable_acl).
    if subprocess.run(["setfacl", "-m", f"u:{NOBODY}:rw", p("private")],
                      capture_output=True, check=False).returncode == 0:
        assert as_nobody(f"cat {p('private')}").returncode == 0
        subprocess.run(["setfacl", "-b", p("private")], check=True)
        assert as_nobody(f"cat {p('private')}").returncode != 0


# ---- hold, commit, release, delete -----------------------------------------------------------


def test_write_only_writers_and_cached_readers_agree(volume: LiveVolume) -> None:
    """Write-only opens bypass the kernel's page cache; readers and mappings that cached the
    old bytes see the new ones, and appends grow the size every descriptor sees."""
    import mmap

    path = volume.path("f")
    write(path, b"a" * 8192)
    with open(path, "r+b") as reader:
        assert reader.read() == b"a" * 8192  # the old bytes are now cached by the kernel
        mapped = mmap.mmap(reader.fileno(), 8192)
        try:
            assert mapped[:4] == b"aaaa"
            fd = os.open(path, os.O_WRONLY)
            try:
                assert os.pwrite(fd, b"b" * 4096, 0) == 4096
            finally:
                os.close(fd)
            reader.seek(0)
            assert reader.read() == b"b" * 4096 + b"a" * 4096
            assert mapped[:4] == b"bbbb" and mapped[4096:4100] == b"aaaa"
        finally:
            mapped.close()
    with open(path, "ab") as appender:
        appender.write(b"c" * 100)
    assert os.stat(path).st_size == 8292
    assert read(path)[-101:] == b"a" + b"c" * 100


def _held_after_writing_before(vol: LiveVolume) -> MountClient:
    """The mount's control client, with "before" written to f and the gate then closed."""
    client = vol.client
    assert client is not None
    write(vol.path("f"), b"before")
    client.call("hold", timeout=10.0)
    return client


def test_hold_blocks_changes_until_release(separate_volume: LiveVolume) -> None:
    vol = separate_volume
    client = _held_after_writing_before(vol)
    done = threading.Event()

    def writer() -> None:
        write(vol.path("f"), b"after!")
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert not done.wait(0.5)
        assert read(vol.path("f")) == b"before"  # reads flow while held
        seq = client.call("commit", snapshot_id="s1", set_id="set1", created="2026-01-01T00:00:00Z")["seq"]
        with pytest.raises(frames.RemoteError, match="already recorded"):
            client.call("commit", snapshot_id="s2", set_id="set1", created="2026-01-01T00:00:00Z")
    finally:
        client.call("release")
        thread.join(10)
    assert done.is_set()
    assert read(vol.path("f")) == b"after!"
    with vol.reader(seq) as snap:
        assert snap.read("f") == b"before"


def test_commit_can_release_and_both_report_the_time_held(separate_volume: LiveVolume) -> None:
    vol = separate_volume
    client = _held_after_writing_before(vol)
    reply = client.call("commit", snapshot_id="s1", set_id="set1", created="2026-01-01T00:00:00Z",
                        release=True)
    assert reply["held_ms"] >= 0
    write(vol.path("f"), b"after")  # the gate is open again
    assert "held_ms" not in client.call("release")  # nothing was left to open
    client.call("hold", timeout=10.0)
    assert client.call("release")["held_ms"] >= 0
    with vol.reader(reply["seq"]) as snap:
        assert snap.read("f") == b"before"


def test_hold_expires_and_commit_fails(separate_volume: LiveVolume) -> None:
    client = separate_volume.client
    assert client is not None
    with pytest.raises(frames.RemoteError, match="not held"):
        client.call("commit", snapshot_id="s", set_id="x", created="2026-01-01T00:00:00Z")
    client.call("hold", timeout=0.3)
    with pytest.raises(frames.RemoteError, match="already held"):
        client.call("hold", timeout=1.0)
    time.sleep(1.0)
    write(separate_volume.path("f"), b"flows again")
    with pytest.raises(frames.RemoteError, match="expired"):
        client.call("commit", snapshot_id="s", set_id="x", created="2026-01-01T00:00:00Z")
    client.call("release")
    assert client.call("status")["snapshots"] == []
    with pytest.raises(frames.RemoteError, match="unknown request"):
        client.call("frobnicate")
    with pytest.raises(frames.RemoteError, match="no snapshot"):
        client.call("delete", seq=42)
    with pytest.raises(frames.RemoteError, match="integer"):
        client.call("delete", seq="1")


def test_delete_snapshots_keeps_the_others_right(separate_volume: LiveVolume) -> None:
    vol = separate_volume
    client = vol.client
    assert client is not None
    write(vol.path("f"), b"v1")
    s1 = client.snapshot()
    write(vol.path("f"), b"v2")
    s2 = client.snapshot()
    write(vol.path("f"), b"v3")
    s3 = client.snapshot()
    os.unlink(vol.path("f"))
    assert client.call("status")["newest"] == s3
    client.call("delete", seq=s2)
    with vol.reader(s1) as snap:
        assert snap.read("f") == b"v1"
    with vol.reader(s3) as snap:
        assert snap.read("f") == b"v3"
    client.call("delete", seq=s3)  # the newest: writes now capture against s1
    assert client.call("status")["newest"] == s1
    assert len(vol.graveyard()) == 1  # s1 still sees f
    with vol.reader(s1) as snap:
        assert snap.read("f") == b"v1"
    client.call("delete", seq=s1)
    assert client.call("status")["newest"] is None
    assert vol.graveyard() == []
    assert vol.used_bytes() == 0


def test_full_diff_area_deletes_oldest_snapshot(separate_volume: LiveVolume) -> None:
    vol = separate_volume
    client = vol.client
    assert client is not None
    write(vol.path("f"), os.urandom(8 * BLOCK_SIZE))
    s1 = client.snapshot()
    s2 = client.snapshot()
    client.call("set_max", bytes=4 * BLOCK_SIZE)
    write(vol.path("f"), os.urandom(6 * BLOCK_SIZE), 0)  # 6 blocks under s2: over the limit
    event = client.wait_event("snapshot_deleted")
    assert event["seq"] == s1 and event["reason"] == "diff area full"
    # s2 holds 6 blocks > limit too: it goes as well, oldest first.
    event = client.wait_event("snapshot_deleted")
    assert event["seq"] == s2
    assert client.call("status")["snapshots"] == []
    assert "is full" in vol.log()


def test_restart_keeps_snapshots_and_refuses_stale_mount(separate_volume: LiveVolume) -> None:
    vol = separate_volume
    write(vol.path("f"), b"one")
    assert vol.client is not None
    seq = vol.client.snapshot()
    write(vol.path("f"), b"two")
    os.unlink(vol.path("f"))
    assert vol.stop() == 0
    assert not mounts.is_fuse_mount(str(vol.mount))
    # Leftovers of a crash between a graveyard link and the change or its record:
    write(str(vol.backing / "kept"), b"k")  # linked, but the unlink never happened
    kept = os.stat(vol.backing / "kept").st_ino
    os.link(vol.backing / "kept", vol.backing / ".shadowfs" / "graveyard" / str(kept))
    write(str(vol.backing / "orphan"), b"o")  # unlinked, but its death was never recorded
    orphan = os.stat(vol.backing / "orphan").st_ino
    os.link(vol.backing / "orphan", vol.backing / ".shadowfs" / "graveyard" / str(orphan))
    os.unlink(vol.backing / "orphan")
    # Such leftovers are made by the mount process itself before it ends, not while the volume is
    # unprotected: its record says protection ended only now (else they would be marked damaged).
    ProtectionRecord(str(vol.protection)).end(time.time() + 1)
    vol._start(0)
    assert vol.client is not None
    assert vol.client.call("status")["newest"] == seq
    assert str(kept) not in vol.graveyard() and str(orphan) in vol.graveyard()
    assert os.stat(vol.path("kept")).st_nlink == 1
    area = vol.area()
    try:
        with area.read() as txn:
            assert area.graveyard_has(txn, orphan)
    finally:
        area.close()
    write(vol.path("g"), b"new")
    with vol.reader(seq) as snap:
        assert snap.read("f") == b"one"
        assert not snap.exists("g")
    # A killed mount process leaves a dead mount behind; a new one refuses to start on it.
    assert vol.proc is not None
    vol.proc.send_signal(signal.SIGKILL)
    vol.proc.wait()
    assert mounts.is_fuse_mount(str(vol.mount))
    vol.allowed_errors.append("already has a FUSE mount")
    with pytest.raises(RuntimeError, match="already has a FUSE mount"):
        vol._start(0)


# ---- randomized: pass-through against a plain directory, snapshots against manifests ---------


class Mirror:
    """Runs each operation on the mount and on a plain directory, and compares the outcomes."""

    def __init__(self, mount: str, plain: str, rng: random.Random) -> None:
        self.roots = (mount, plain)
        self.rng = rng
        self.names = ["a", "b", "c", "d0/a", "d0/b", "d1/a", "d0/e/a", "d0/e", "d1", "d0"]

    def pick(self) -> str:
        return self.rng.choice(self.names)

    def both(self, op: Any) -> None:
        results = []
        for root in self.roots:
            try:
                results.append(("ok", op(root)))
            except OSError as exc:
                results.append(("err", exc.errno))
        assert results[0] == results[1], (op.__doc__, results)

    def step(self) -> str:
        rng = self.rng
        kind = rng.choice(["write", "write", "write", "truncate", "append", "unlink", "mkdir", "rmdir",
                           "rename", "rename", "link", "symlink", "chmod", "xattr", "otrunc", "read"])
        a, b = self.pick(), self.pick()
        offset = rng.choice([0, 10, BLOCK_SIZE - 3, BLOCK_SIZE, 3 * BLOCK_SIZE + 7])
        data = rng.randbytes(rng.choice([1, 100, BLOCK_SIZE, 2 * BLOCK_SIZE + 5]))
        size = rng.choice([0, 5, BLOCK_SIZE + 1, 4 * BLOCK_SIZE])
        mode = rng.choice([0o600, 0o644, 0o755, 0o4755])

        def j(root: str, name: str) -> str:
            return os.path.join(root, name)

        def do_write(root: str) -> int:
            fd = os.open(j(root, a), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        def do_append(root: str) -> int:
            fd = os.open(j(root, a), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        def do_otrunc(root: str) -> int:
            fd = os.open(j(root, a), os.O_WRONLY | os.O_TRUNC)
            try:
                return os.write(fd, data[:7])
            finally:
                os.close(fd)

        def do_read(root: str) -> bytes:
            with open(j(root, a), "rb") as f:
                return f.read()

        set_xattr = rng.random() < 0.5

        def do_xattr(root: str) -> None:
            if set_xattr:
                os.setxattr(j(root, a), "user.x", data[:20], follow_symlinks=False)
            else:
                os.removexattr(j(root, a), "user.x", follow_symlinks=False)

        ops = {
            "write": do_write, "append": do_append, "otrunc": do_otrunc, "read": do_read,
            "truncate": lambda root: os.truncate(j(root, a), size),
            "unlink": lambda root: os.unlink(j(root, a)),
            "mkdir": lambda root: os.mkdir(j(root, a), 0o755),
            "rmdir": lambda root: os.rmdir(j(root, a)),
            "rename": lambda root: os.rename(j(root, a), j(root, b)),
            "link": lambda root: os.link(j(root, a), j(root, b), follow_symlinks=False),
            "symlink": lambda root: os.symlink(b, j(root, a)),
            "chmod": lambda root: os.chmod(j(root, a), mode),
            "xattr": do_xattr,
        }
        op = ops[kind]
        op.__doc__ = f"{kind} {a} {b}"
        # The same random choices must be made for both roots: draw once, replay.
        self.both(op)
        return kind

    def compare_trees(self) -> None:
        assert tree_shape(self.roots[0]) == tree_shape(self.roots[1])


def tree_shape(root: str) -> dict[str, Any]:
    """Everything but times and inode numbers, by relative path."""
    shape: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            item: tuple[Any, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                                     st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0)
            if stat.S_ISREG(st.st_mode):
                item += (hashlib.sha256(read(path)).hexdigest(),
                         tuple(sorted((k, os.getxattr(path, k)) for k in os.listxattr(path))))
            elif stat.S_ISLNK(st.st_mode):
                item += (os.readlink(path),)
            shape[rel] = item
    return shape


def backing_manifest(backing_fd: int) -> dict[str, tuple[Any, ...]]:
    """The backing tree (minus .shadowfs) read through descriptors: the oracle of a snapshot."""
    manifest: dict[str, tuple[Any, ...]] = {}

    def walk(dir_fd: int, prefix: str) -> None:
        for entry in sorted(os.listdir(dir_fd)):
            if not prefix and entry == ".shadowfs":
                continue
            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            rel = prefix + entry
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                fd = os.open(entry, os.O_RDONLY, dir_fd=dir_fd)
                try:
                    content = hashlib.sha256(os.pread(fd, st.st_size + 1, 0)).hexdigest()
                    xattrs = {os.fsencode(k): os.getxattr(fd, k) for k in os.listxattr(fd)}
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(entry, dir_fd=dir_fd).encode()
                xattrs = {}
            else:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
                xattrs = {os.fsencode(k): os.getxattr(fd, k) for k in os.listxattr(fd)}
                try:
                    walk(fd, rel + "/")
                finally:
                    os.close(fd)
            manifest[rel] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
                             st.st_mtime_ns, st.st_ctime_ns, content, tuple(sorted(xattrs.items())))
    walk(backing_fd, "")
    return manifest


def snapshot_manifest(vol: LiveVolume, seq: int) -> dict[str, tuple[Any, ...]]:
    manifest: dict[str, tuple[Any, ...]] = {}
    with vol.reader(seq) as snap:
        view = snap.view

        def walk(dir_ino: int, prefix: str) -> None:
            for name, dirent in view.listdir(dir_ino):
                rel = prefix + os.fsdecode(name)
                record = view.attr(dirent.ino, with_xattrs=True)
                content: Any = None
                if record.is_reg:
                    content = hashlib.sha256(view.read(dirent.ino, 0, record.size, record.size)).hexdigest()
                elif record.is_symlink:
                    content = record.symlink_target
                elif record.is_dir:
                    walk(dirent.ino, rel + "/")
                xattrs = {} if record.is_symlink else record.xattrs
                manifest[rel] = (dirent.ino, record.mode, record.uid, record.gid, record.nlink,
                                 record.size, record.mtime_ns, record.ctime_ns, content,
                                 tuple(sorted(xattrs.items())))
        walk(view.root_ino, "")
    return manifest


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations(volume: LiveVolume, seed: int, tmp_path: Any) -> None:
    rng = random.Random(seed)
    plain = tmp_path / "plain"
    plain.mkdir()
    mirror = Mirror(str(volume.mount), str(plain), rng)
    client = volume.client
    assert client is not None
    manifests: dict[int, dict[str, tuple[Any, ...]]] = {}
    for i in range(700):
        mirror.step()
        if i % 50 == 49:
            mirror.compare_trees()
        roll = rng.random()
        if roll < 0.04:
            seq = client.snapshot()
            manifests[seq] = backing_manifest(volume.backing_fd)
        elif roll < 0.05 and len(manifests) > 2:
            seq = rng.choice(sorted(manifests))
            client.call("delete", seq=seq)
            del manifests[seq]
    mirror.compare_trees()
    assert manifests
    for seq, expected in manifests.items():
        got = snapshot_manifest(volume, seq)
        assert got.keys() == expected.keys(), seq
        for path in expected:
            assert got[path] == expected[path], (seq, path)
    # Graveyard entries outlive their death only while a snapshot as old as it remains...
    area = volume.area()
    try:
        with area.read() as txn:
            oldest = area.oldest_seq(txn)
            assert oldest is not None
            assert area.graveyard_expired(txn) == []
            assert all(area.graveyard_has(txn, int(name)) for name in volume.graveyard())
    finally:
        area.close()
    # ... and once every snapshot is gone nothing is left behind.
    for seq in sorted(manifests):
        client.call("delete", seq=seq)
    assert volume.graveyard() == []
    assert volume.used_bytes() == 0
    mirror.compare_trees()


# ---- concurrency, mmap, shutdown ---------------------------------------------------------------


def test_concurrent_changes_and_snapshot_instants(volume: LiveVolume) -> None:
    """Writers never stop; each snapshot equals the backing tree recorded while held."""
    client = volume.client
    assert client is not None
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        base = volume.path(f"w{index}")
        os.mkdir(base)
        try:
            while not stop.is_set():
                name = os.path.join(base, f"f{rng.randrange(4)}")
                other = os.path.join(base, f"f{rng.randrange(4)}")
                kind = rng.randrange(6)
                try:
                    if kind <= 2:
                        write(name, rng.randbytes(rng.choice([10, BLOCK_SIZE + 3])) if kind == 0
                              else rng.randbytes(50), None if kind != 1 else 0)
                    elif kind == 3:
                        os.truncate(name, rng.randrange(2 * BLOCK_SIZE))
                    elif kind == 4:
                        os.rename(name, other)
                    else:
                        os.unlink(name)
                except FileNotFoundError:
                    pass
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        manifests = snapshots_while_running(client, volume, rounds=6, pause=0.15, hold_timeout=10.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures
    for seq, expected in manifests.items():
        assert snapshot_manifest(volume, seq) == expected, seq


def snapshots_while_running(client: MountClient, volume: LiveVolume, rounds: int, pause: float,
                            hold_timeout: float) -> dict[int, dict[str, tuple[Any, ...]]]:
    """Take `rounds` snapshots `pause` seconds apart while writers run; each one's oracle is the
    backing tree read while changes were held, before its commit."""
    manifests = {}
    for _ in range(rounds):
        time.sleep(pause)
        client.call("hold", timeout=hold_timeout)
        try:
            manifest = backing_manifest(volume.backing_fd)
            seq = client.call("commit", snapshot_id="c", set_id="c", created="2026-01-01T00:00:00Z")["seq"]
        finally:
            client.call("release")
        manifests[seq] = manifest
    return manifests


def test_shared_mmap_writes_are_flushed_at_the_instant(separate_volume: LiveVolume) -> None:
    import mmap

    vol = separate_volume
    assert vol.client is not None
    write(vol.path("m"), b"\0" * (2 * BLOCK_SIZE))
    with open(vol.path("m"), "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 2 * BLOCK_SIZE)
        try:
            mapped[0:5] = b"first"  # dirty page, not synced: the hold's flush must push it
            seq1 = vol.client.snapshot()
            mapped[0:6] = b"second"
            mapped.flush()
            seq2 = vol.client.snapshot()
        finally:
            mapped.close()
    with vol.reader(seq1) as snap:
        assert snap.read("m")[:6] == b"first\0"
    with vol.reader(seq2) as snap:
        assert snap.read("m")[:6] == b"second"


def test_sigterm_unmounts_and_exits_cleanly(volume: LiveVolume) -> None:
    write(volume.path("f"), b"x")
    assert volume.proc is not None
    volume.proc.send_signal(signal.SIGTERM)
    assert volume.proc.wait(timeout=20) == 0
    assert not mounts.is_fuse_mount(str(volume.mount))
    assert os.stat("f", dir_fd=volume.backing_fd).st_size == 1


def test_startup_errors_are_clear(tmp_path: Any) -> None:
    import socket
    import sys

    def start(backing: str, mount: str, control_fd: int | None = None) -> subprocess.CompletedProcess[str]:
        parent, child = socket.socketpair()
        try:
            fd = child.fileno() if control_fd is None else control_fd
            return subprocess.run(
                [sys.executable, "-m", "shadowfs.live.process", "--control-fd", str(fd), "--volume", "v",
                 "--backing", backing, "--mount", mount, "--diff-area", str(tmp_path / "diff"),
                 "--protection", str(tmp_path / "protection")],
                pass_fds=[child.fileno()], capture_output=True, text=True, timeout=60, check=False,
                cwd=livefs_fixtures.REPO)
        finally:
            parent.close()
            child.close()

    backing = tmp_path / "backing"
    backing.mkdir()
    result = start(str(backing), str(tmp_path / "missing"))
    assert result.returncode == 1 and "is not a directory" in result.stderr
    result = start(str(backing), str(backing), control_fd=0)
    assert result.returncode == 1 and "not a usable socket" in result.stderr
    shm = tempfile_dir("/dev/shm")
    if shm is not None:
        try:
            result = start(shm, shm)
            assert result.returncode == 1 and "is on tmpfs" in result.stderr, result.stderr
            assert "ext4, XFS and btrfs" in result.stderr, result.stderr
        finally:
            os.rmdir(shm)
    assert not mounts.is_fuse_mount(str(backing))


def tempfile_dir(parent: str) -> str | None:
    import tempfile

    try:
        return tempfile.mkdtemp(dir=parent)
    except OSError:
        return None


def test_descriptors_stay_bounded_with_many_files(separate_volume: LiveVolume) -> None:
    """The mount keeps a bounded cache of descriptors, not one per inode the kernel knows."""
    from shadowfs.live.ops import PATH_FD_CAPACITY

    count = PATH_FD_CAPACITY * 2 + 500
    backing = separate_volume.backing
    for i in range(count):
        with open(os.path.join(backing, f"f{i}"), "wb") as f:
            f.write(b"x")
    seen = 0
    for entry in os.scandir(separate_volume.path()):
        os.lstat(entry.path)  # the kernel now knows every inode
        seen += 1
    assert seen == count
    open_fds = len(os.listdir(f"/proc/{separate_volume.proc.pid}/fd"))
    assert open_fds < PATH_FD_CAPACITY + 200, f"{open_fds} descriptors open in the mount process"
    # inodes that fell out of the cache are reopened by number
    for i in range(0, count, 97):
        assert os.stat(separate_volume.path(f"f{i}")).st_size == 1
