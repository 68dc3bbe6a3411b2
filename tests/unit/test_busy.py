"""`linux.busy`: who holds a tree, found in /proc with real processes holding real files.

Each test starts its holders as child processes (killed at teardown) under its own tmp_path, and
checks what `holders` says about them; everything else on the machine is whatever it is, so the
tests look only at their own children (or the tree's own pids). The bind-mount test makes its
mounts in a private mount namespace (unshare), so nothing is mounted in ours.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shadowfs.linux import busy
from shadowfs.linux.busy import MAPPING, OPEN_FILE, ROOT_DIRECTORY, WORKING_DIRECTORY, Holder

Spawn = Callable[..., subprocess.Popen[str]]

MAP_AND_CLOSE = """
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
assert address not in (None, ctypes.c_void_p(-1).value)
os.close(fd)  # only the mapping is left
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a child process (Popen arguments); every one is killed at teardown."""
    children: list[subprocess.Popen[str]] = []

    def start(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        child: subprocess.Popen[str] = subprocess.Popen(args, text=True, **kwargs)  # type: ignore[call-overload]
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "tree"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "a.txt").write_text("a" * 8192)
    (tmp_path / "tree2").mkdir()  # a sibling whose name starts with the tree's
    (tmp_path / "tree2" / "b.txt").write_text("b")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.txt").write_text("c")
    return top


def held_by(found: list[Holder], *children: subprocess.Popen[str]) -> set[tuple[int, str, str, str]]:
    pids = {child.pid for child in children}
    return {(h.pid, h.command, h.what, h.path) for h in found if h.pid in pids}


def sleeper(spawn: Spawn, **kwargs: object) -> subprocess.Popen[str]:
    """`sleep 600`; Popen returns after the exec, so its descriptors and directory are in place."""
    return spawn(["sleep", "600"], **kwargs)


def test_an_open_file_a_working_directory_and_a_mapping_are_found(spawn: Spawn, tree: Path) -> None:
    with open(tree / "sub" / "a.txt") as file:
        reader = sleeper(spawn, stdin=file)
    in_sub = sleeper(spawn, cwd=tree / "sub")
    at_top = sleeper(spawn, cwd=tree)
    mapper = spawn([sys.executable, "-c", MAP_AND_CLOSE, str(tree / "sub" / "a.txt")], stdout=subprocess.PIPE)
    assert mapper.stdout is not None and mapper.stdout.readline() == "ready\n"
    found = busy.holders(str(tree))
    assert held_by(found, reader, in_sub, at_top) == {
        (reader.pid, "sleep", OPEN_FILE, "sub/a.txt"),
        (in_sub.pid, "sleep", WORKING_DIRECTORY, "sub"),
        (at_top.pid, "sleep", WORKING_DIRECTORY, "."),
    }
    assert {(h.what, h.path) for h in found if h.pid == mapper.pid} == {(MAPPING, "sub/a.txt")}
    assert [h.pid for h in found] == sorted(h.pid for h in found)
    first = next(h for h in found if h.pid == reader.pid)
    assert str(first) == f"pid {reader.pid} (sleep): open file sub/a.txt"


def test_what_is_held_outside_the_tree_does_not_count(spawn: Spawn, tree: Path) -> None:
    outside = tree.parent
    with open(outside / "tree2" / "b.txt") as sibling, open(outside / "elsewhere" / "c.txt") as other:
        holding = [sleeper(spawn, stdin=sibling), sleeper(spawn, stdin=other, cwd=outside / "tree2"),
                   sleeper(spawn, cwd=outside)]
    assert held_by(busy.holders(str(tree)), *holding) == set()
    assert held_by(busy.holders(str(outside / "tree2")), *holding) == {
        (holding[0].pid, "sleep", OPEN_FILE, "b.txt"), (holding[1].pid, "sleep", WORKING_DIRECTORY, ".")}


def test_a_tree_named_through_a_symlink_is_the_same_tree(spawn: Spawn, tree: Path) -> None:
    link = tree.parent / "link"
    link.symlink_to(tree)
    with open(link / "sub" / "a.txt") as through_link:
        reader = sleeper(spawn, stdin=through_link)
    walker = sleeper(spawn, cwd=tree)
    expected = {(reader.pid, "sleep", OPEN_FILE, "sub/a.txt"), (walker.pid, "sleep", WORKING_DIRECTORY, ".")}
    assert held_by(busy.holders(str(link)), reader, walker) == expected
    assert held_by(busy.holders(str(tree)), reader, walker) == expected


def test_a_file_deleted_while_open_shows_where_it_was(spawn: Spawn, tree: Path) -> None:
    gone = tree / "sub" / "gone.txt"
    gone.write_text("x")
    with open(gone) as file:
        reader = sleeper(spawn, stdin=file)
    gone.unlink()
    assert held_by(busy.holders(str(tree)), reader) == {
        (reader.pid, "sleep", OPEN_FILE, "sub/gone.txt (deleted)")}


def test_a_chrooted_process_holds_its_root(spawn: Spawn, tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    jail = tree / "sub"
    # python chroots itself once running (a dynamically linked program could not start in an empty jail)
    code = (f"import os, time; os.chroot({str(jail)!r}); os.chdir('/'); print('ready', flush=True); "
            "time.sleep(600)")
    jailed = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert jailed.stdout is not None and jailed.stdout.readline() == "ready\n"
    found = {(h.what, h.path) for h in busy.holders(str(tree)) if h.pid == jailed.pid}
    assert (ROOT_DIRECTORY, "sub") in found and (WORKING_DIRECTORY, "sub") in found


def test_bind_mounts_elsewhere_count_and_foreign_ones_inside_do_not(spawn: Spawn, tree: Path) -> None:
    """In a private mount namespace: the tree bound at `whole`, its `sub` at `part`, and an outside
    directory bound into the tree at `inner`; what is held through the first two is in the tree (at its
    place in the tree), what is held through the third is not."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root")
    base = tree.parent
    for name in ("whole", "part"):
        (base / name).mkdir()
    (tree / "inner").mkdir()
    script = (f"mount --bind {tree} {base}/whole && mount --bind {tree}/sub {base}/part && "
              f"mount --bind {base}/elsewhere {tree}/inner && cd {base}/part && echo ready && "
              f"exec sleep 600 3<{base}/whole/sub/a.txt 4<{tree}/inner/c.txt")
    contained = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert contained.stdout is not None
    if contained.stdout.readline() != "ready\n":
        pytest.skip(f"cannot bind-mount in a private namespace here: {contained.communicate()[1].strip()}")
    comm = Path(f"/proc/{contained.pid}/comm")
    for _ in range(200):  # until sh has exec'd sleep
        if comm.read_text() == "sleep\n":
            break
        time.sleep(0.05)
    assert held_by(busy.holders(str(tree)), contained) == {
        (contained.pid, "sleep", WORKING_DIRECTORY, "sub"), (contained.pid, "sleep", OPEN_FILE, "sub/a.txt")}


def test_ignored_processes_and_their_descendants_are_not_counted(spawn: Spawn, tree: Path) -> None:
    parent = spawn(["sh", "-c", "sleep 600 & echo $!; wait"], cwd=tree, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        other = sleeper(spawn, cwd=tree)
        pids = {h.pid for h in busy.holders(str(tree))}
        assert {parent.pid, child_pid, other.pid} <= pids
        pids = {h.pid for h in busy.holders(str(tree), ignore=[parent.pid])}
        assert other.pid in pids and not {parent.pid, child_pid} & pids
        assert busy.holders(str(tree), ignore=[os.getpid()]) == []  # every holder is a child of this test
    finally:
        os.kill(child_pid, signal.SIGKILL)  # the fixture kills only the shell


def test_processes_coming_and_going_never_raise(tree: Path) -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["sh", "-c", "true"], cwd=tree, check=False)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(20):
            busy.holders(str(tree))
    finally:
        stop.set()
        thread.join()


def test_a_tree_that_does_not_exist_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        busy.holders(str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError):
        (tmp_path / "file").write_text("")
        busy.holders(str(tmp_path / "file"))


def test_summary_names_ten_processes_and_counts_the_rest() -> None:
    many = [Holder(100 + i, "cmd", OPEN_FILE, f"f{i}") for i in range(12)]
    many[1:1] = [Holder(100, "cmd", WORKING_DIRECTORY, "."), Holder(100, "cmd", MAPPING, "lib.so"),
                 Holder(100, "cmd", OPEN_FILE, "g"), Holder(100, "cmd", OPEN_FILE, "h")]
    line = busy.summary(many)
    assert line.startswith("pid 100 (cmd): open file f0, working directory ., memory mapping lib.so "
                           "and 2 more; pid 101 (cmd): open file f1; ")
    assert "pid 109 (cmd): open file f9; and 2 more processes" in line and "pid 110" not in line
    assert busy.summary(many[:1]) == "pid 100 (cmd): open file f0"
    assert busy.summary([Holder(1, "a", OPEN_FILE, "x"), Holder(2, "b", OPEN_FILE, "y")], limit=1) == (
        "pid 1 (a): open file x; and 1 more process")
    assert busy.summary([]) == ""
