"""`linux.fanotify.ChangeWatch` on the real kernel: changes that reach a backing directory are reported.

A watch marks the filesystem of a temporary backing directory; child processes change objects in
it (write, chmod, create, delete, rename files and directories) and outside it on the same
filesystem. `read` must report every object changed in the tree, by inode and path, and nothing
outside; drop the changes of the processes it is told to ignore; keep what is queued when its
descriptor is handed to another process; and raise `WatchOverflow` when the kernel lost events.
The whole filesystem is watched, so events of other programs arrive too: they are outside the
tree and must be dropped like the test's own outside write.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.errors import WatchOverflow, WatchUnavailable
from shadowfs.linux import fanotify as fan
from shadowfs.linux.fanotify import Change, ChangeWatch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify filesystem marks need root")


def run_child(code: str, *args: object) -> int:
    """Run `code` in a new Python process (sys.argv[1:] = args as strings); its pid once it is done."""
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO)
    assert proc.wait(timeout=60) == 0
    return proc.pid


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    top = tmp_path / "backing"
    for directory in ("sub", "dd", "moving/inner"):
        (top / directory).mkdir(parents=True)
    for name in ("w", "m", "old", "del", "sub/x", "moving/inner/f"):
        (top / name).write_bytes(b"data")
    return top


@pytest.fixture
def root_fd(backing: Path) -> Iterator[int]:
    fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture(params=[True, False], ids=["target-fid", "no-target-fid"])
def watch(request: pytest.FixtureRequest, backing: Path, root_fd: int) -> Iterator[ChangeWatch]:
    with ChangeWatch.open(root_fd, str(backing), target_fid=request.param) as opened:
        if request.param and not opened.reports_target:
            pytest.skip("a kernel before 5.17 (no FAN_REPORT_TARGET_FID): the no-target-fid run covers it")
        assert opened.reports_target is request.param
        yield opened


def ino(path: Path) -> int:
    return os.lstat(path).st_ino


def of(changes: list[Change], pid: int) -> list[Change]:
    return [change for change in changes if change.pid == pid]


def find(changes: list[Change], bit: int, path: bytes) -> Change:
    found = [change for change in changes if change.mask & bit and change.path == path]
    assert len(found) == 1, (hex(bit), path, changes)
    return found[0]


CHANGES = """
import os, sys
b, outside = sys.argv[1], sys.argv[2]
with open(b + "/w", "ab") as f: f.write(b"appended")
os.chmod(b + "/m", 0o600)
open(b + "/new", "wb").close()
os.mkdir(b + "/nd"); open(b + "/nd/inner", "wb").close()
os.unlink(b + "/del")
os.rename(b + "/old", b + "/sub/renamed")
os.rmdir(b + "/dd")
os.rename(b + "/sub", b + "/sub2")
os.chmod(b, 0o755)
with open(outside, "wb") as f: f.write(b"outside the backing directory, same filesystem")
"""


def test_every_change_in_the_tree_and_none_outside(watch: ChangeWatch, backing: Path, tmp_path: Path) -> None:
    before = {name: ino(backing / name) for name in ("w", "m", "old", "del", "sub", "dd")}
    root = ino(backing)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")  # made now, so its inode number cannot be one freed by the child
    pid = run_child(CHANGES, backing, outside)
    changes = watch.read({os.getpid()})
    mine = of(changes, pid)
    assert mine and all(change.path is not None for change in mine)
    assert ino(outside) not in {change.ino for change in changes}
    assert not any(change.pid == os.getpid() for change in changes)

    assert find(mine, fan.FAN_MODIFY, b"w")[:3] == (before["w"], None, b"w")
    assert find(mine, fan.FAN_ATTRIB, b"m")[:3] == (before["m"], None, b"m")
    assert find(mine, fan.FAN_ATTRIB, b"").ino == root  # the backing directory itself
    created = find(mine, fan.FAN_CREATE, b"new")
    assert (created.ino, created.dir_ino) == (ino(backing / "new"), root)
    made_dir = find(mine, fan.FAN_CREATE, b"nd")
    assert (made_dir.ino, made_dir.dir_ino, made_dir.mask & fan.FAN_ONDIR) == (ino(backing / "nd"), root,
                                                                                fan.FAN_ONDIR)
    inner = find(mine, fan.FAN_CREATE, b"nd/inner")
    assert (inner.ino, inner.dir_ino) == (ino(backing / "nd/inner"), ino(backing / "nd"))
    # the directory `sub` moved to sub2 after the file moved into it: its place is where it is now
    moved_to = find(mine, fan.FAN_MOVED_TO, b"sub2/renamed")
    assert (moved_to.ino, moved_to.dir_ino) == (before["old"], before["sub"])
    assert find(mine, fan.FAN_MOVED_TO, b"sub2")[:2] == (before["sub"], root)

    # what is gone by the time of the read: known by inode only with FAN_REPORT_TARGET_FID
    target = watch.reports_target
    for bit, path, name in ((fan.FAN_DELETE, b"del", "del"), (fan.FAN_MOVED_FROM, b"old", "old"),
                            (fan.FAN_DELETE, b"dd", "dd"), (fan.FAN_MOVED_FROM, b"sub", "sub")):
        change = find(mine, bit, path)
        assert (change.ino, change.dir_ino) == (before[name] if target else 0, root), change
    assert find(mine, fan.FAN_DELETE, b"dd").mask & fan.FAN_ONDIR

    reported = {change.ino for change in mine} - {0}
    in_tree = set(before.values()) | {root} | {ino(backing / name) for name in ("new", "nd", "nd/inner")}
    assert reported <= in_tree
    assert of(watch.read(), pid) == []  # all was read at once


def test_a_directory_gone_by_the_read_is_placed_by_the_batch(watch: ChangeWatch, backing: Path) -> None:
    code = """
import os, sys
b = sys.argv[1]
os.makedirs(b + "/t/u"); open(b + "/t/u/v", "wb").close()
os.unlink(b + "/t/u/v"); os.rmdir(b + "/t/u"); os.rmdir(b + "/t")
"""
    pid = run_child(code, backing)
    mine = of(watch.read(), pid)
    paths = {change.path for change in mine}
    if watch.reports_target:  # each deleted directory was named by its deletion in a placed parent
        assert {b"t", b"t/u", b"t/u/v"} <= paths
        assert watch.unplaced == 0
    else:  # without the children's handles the events inside t and t/u cannot be placed
        assert b"t" in paths and not paths & {b"t/u", b"t/u/v"}
        assert watch.unplaced > 0


def test_a_change_just_before_its_directory_leaves_the_tree(watch: ChangeWatch, backing: Path,
                                                            tmp_path: Path) -> None:
    f_ino, moving = ino(backing / "moving/inner/f"), ino(backing / "moving")
    code = """
import os, sys
b, away = sys.argv[1], sys.argv[2]
with open(b + "/moving/inner/f", "ab") as f: f.write(b"x")
os.rename(b + "/moving", away)
"""
    pid = run_child(code, backing, tmp_path / "away")
    mine = of(watch.read(), pid)
    if watch.reports_target:  # the directory's handle in the move says where `inner` was
        assert find(mine, fan.FAN_MODIFY, b"moving/inner/f").ino == f_ino
        assert find(mine, fan.FAN_MOVED_FROM, b"moving").ino == moving
    else:  # a kernel before 5.17: only the move is seen (the module docstring says so)
        assert [change.path for change in mine] == [b"moving"]
    # once out, its changes are no longer ours
    pid = run_child("import sys\nopen(sys.argv[1], 'ab').write(b'y')", tmp_path / "away/inner/f")
    assert of(watch.read(), pid) == []


def test_changes_of_ignored_processes_are_dropped(watch: ChangeWatch, backing: Path) -> None:
    with open(backing / "w", "ab") as f:
        f.write(b"by the test process")
    pid = run_child("import sys\nopen(sys.argv[1], 'ab').write(b'by a child')", backing / "m")
    changes = watch.read({os.getpid()})
    assert of(changes, os.getpid()) == []
    assert find(of(changes, pid), fan.FAN_MODIFY, b"m").ino == ino(backing / "m")
    with open(backing / "w", "ab") as f:
        f.write(b"again")
    assert find(of(watch.read(), os.getpid()), fan.FAN_MODIFY, b"w").ino == ino(backing / "w")
    # a directory move by an ignored process still empties the cache of places
    os.rename(backing / "moving", backing.parent / "moved_out")
    assert watch.read({os.getpid()}) == []
    pid = run_child("import sys\nopen(sys.argv[1], 'ab').write(b'y')", backing.parent / "moved_out/inner/f")
    assert of(watch.read(), pid) == []


SUCCESSOR = """
import json, sys
from shadowfs.linux.fanotify import ChangeWatch
watch = ChangeWatch.from_fd(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
print(json.dumps([[c.ino, c.dir_ino, c.path.decode() if c.path is not None else None, c.mask, c.pid]
                  for c in watch.read()]))
"""


def test_a_successor_reads_what_was_queued_before_it(watch: ChangeWatch, backing: Path, root_fd: int) -> None:
    pid = run_child(CHANGES, backing, backing.parent / "outside")
    args = [sys.executable, "-c", SUCCESSOR, str(watch.fileno()), str(root_fd), str(backing)]
    successor = subprocess.run(args, pass_fds=(watch.fileno(), root_fd), capture_output=True, text=True,
                               timeout=60, cwd=REPO, check=True)
    theirs = [Change(i, d, p.encode() if p is not None else None, m, q)
              for i, d, p, m, q in json.loads(successor.stdout) if q == pid]
    assert find(theirs, fan.FAN_MODIFY, b"w").ino == ino(backing / "w")
    assert find(theirs, fan.FAN_CREATE, b"nd/inner").ino == ino(backing / "nd/inner")
    assert of(watch.read(), pid) == []  # one group, one queue: the successor has read them


def test_a_descriptor_that_is_no_fanotify_group_is_refused(backing: Path, root_fd: int) -> None:
    fd = os.open(backing / "w", os.O_RDONLY)
    try:
        with pytest.raises(WatchUnavailable, match="not a fanotify group"):
            ChangeWatch.from_fd(fd, root_fd, str(backing))
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="not absolute"):
        ChangeWatch.open(root_fd, "relative/backing")


def test_an_overflow_is_raised_after_the_queue_is_read(backing: Path, root_fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = fan.FAN_CLASS_NOTIF | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK | fan.NEEDED_FLAGS
    fd = libc.fanotify_init(flags, os.O_RDONLY)  # a bounded queue this time
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert libc.fanotify_mark(fd, fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM, ctypes.c_uint64(fan.FAN_CREATE),
                              root_fd, None) == 0, os.strerror(ctypes.get_errno())
    with ChangeWatch.from_fd(fd, root_fd, str(backing)) as bounded:
        limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
        many = backing / "many"
        many.mkdir()
        for i in range(limit + 10):
            os.close(os.open(many / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
        with pytest.raises(WatchOverflow, match="scan the backing directory"):
            bounded.read()
        (backing / "after").write_bytes(b"")
        assert find(bounded.read(), fan.FAN_CREATE, b"after").ino == ino(backing / "after")


NOT_ROOT = """
import os, sys
from shadowfs.errors import WatchUnavailable
from shadowfs.linux.fanotify import ChangeWatch
fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)  # no capability left
try:
    ChangeWatch.open(fd, "/")
except WatchUnavailable as exc:
    print(exc.errno, exc.strerror)
"""


def test_without_root_the_error_says_so() -> None:
    result = subprocess.run([sys.executable, "-c", NOT_ROOT], capture_output=True, text=True, timeout=60,
                            cwd=REPO, check=True)
    assert result.stdout.strip() == f"{errno.EPERM} fanotify_init: fanotify needs CAP_SYS_ADMIN: run as root"
