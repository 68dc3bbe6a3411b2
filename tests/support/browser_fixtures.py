"""Fixtures of the snapshot-browser tests: real browser processes, real mounts.

- `BrowserProcess` starts ``python -m shadowfs.browser.process`` on a socketpair,
  waits for its ready event, sends it volumes (backing-root descriptors via
  SCM_RIGHTS) and always stops it and unmounts only its own mount path.
- `Volume` is a backing directory changed the way the live mount changes it
  (`tests.support.coresim.CoreSim`: capture first, then change), with snapshot sets
  recorded under chosen set ids and times.
- `manifest` / `compare` are the tree-compare oracle: names, types, content
  hashes, size, mode, owner, mtime/ctime, nlink, rdev, xattrs, symlink
  targets, and hard-link groups (paths sharing an inode number).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shadowfs.ipc import frames
from shadowfs.linux import mounts
from shadowfs.manifest import file_digest, xattrs_of
from tests.support.coresim import CoreSim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


# ---- the browser process -----------------------------------------------------------------------


class BrowserProcess:
    """One `shadowfs.browser.process` child with its control socket."""

    def __init__(self, mount: str, log_path: str) -> None:
        self.mount = mount
        self.log_path = log_path
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids = 0

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH"))
                                                          if p))
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "shadowfs.browser.process", "--control-fd", str(child.fileno()),
                     "--mount", self.mount], pass_fds=(child.fileno(),), env=env, start_new_session=True,
                    stderr=log)
        finally:
            child.close()
        self.sock = parent
        parent.settimeout(START_TIMEOUT)
        event, fds = frames.recv_frame(parent)
        frames.close_fds(fds)
        assert event == {"event": "ready"}, event
        assert mounts.is_fuse_mount(self.mount)

    def call(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        assert self.sock is not None
        self._ids += 1
        frames.send_frame(self.sock, {**request, "id": self._ids}, fds or [])
        reply, reply_fds = frames.recv_frame(self.sock)
        frames.close_fds(reply_fds)
        assert reply.get("id") == self._ids, reply
        return reply

    def set_volumes(self, volumes: list[tuple[str, int, str, str]]) -> dict[str, Any]:
        """(name, index, diff area, backing dir) per volume; the backing roots go as descriptors."""
        fds = [os.open(backing, os.O_RDONLY | os.O_DIRECTORY) for _, _, _, backing in volumes]
        try:
            return self.call({"op": "volumes", "volumes": [
                {"name": name, "index": index, "diff_area": area} for name, index, area, _ in volumes]}, fds)
        finally:
            frames.close_fds(fds)

    def stop(self) -> int | None:
        """Close the control socket, wait for the exit; kill if it hangs; unmount our mount only."""
        code = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                code = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        mounts.unmount(self.mount)
        return code


@dataclass
class Workspace:
    """A world-readable directory under /tmp (so a non-owner can reach the mount)."""

    base: str
    mount: str
    browsers: list[BrowserProcess] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)

    def volume(self, name: str, index: int) -> Volume:
        volume = Volume(name, index, os.path.join(self.base, f"backing-{name}"),
                        os.path.join(self.base, f"area-{name}"))
        self.volumes.append(volume)
        return volume

    def browser(self, volumes: list[Volume] | None = None) -> BrowserProcess:
        browser = BrowserProcess(self.mount, self.log_path)
        self.browsers.append(browser)
        browser.start()
        if volumes is not None:
            reply = browser.set_volumes([v.spec for v in volumes])
            assert reply.get("ok"), reply
        return browser

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, "browser.log")

    def close(self) -> str:
        """Stop every browser, unmount our mount only, remove the directory; the browsers' log."""
        for browser in self.browsers:
            browser.stop()
        for volume in self.volumes:
            volume.close()
        mounts.unmount(self.mount)
        log = ""
        if os.path.exists(self.log_path):
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                log = f.read()
        if not mounts.is_fuse_mount(self.mount):
            shutil.rmtree(self.base, ignore_errors=True)
        return log


LOG_ALARMS = ("Traceback", "unexpected error", "went negative", "fuse_reply_")


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    base = tempfile.mkdtemp(prefix="shadowfs-browser-", dir="/tmp")
    os.chmod(base, 0o755)
    space = Workspace(base, os.path.join(base, "snapshots"))
    try:
        yield space
    finally:
        log = space.close()
        print(log)  # shown by pytest when the test fails
    alarms = [line for line in log.splitlines() if any(alarm in line for alarm in LOG_ALARMS)]
    if alarms:
        pytest.fail("the browser logged errors:\n" + "\n".join(alarms), pytrace=False)


# ---- volumes changed like the live mount changes them ------------------------------------------


class Volume(CoreSim):
    """A backing directory plus its writable diff area, changed capture-first."""

    def __init__(self, name: str, index: int, backing: str, diff_area: str) -> None:
        os.makedirs(backing, exist_ok=True)
        super().__init__(backing, diff_area)
        self.name = name
        self.index = index
        self.diff_area = diff_area

    @property
    def spec(self) -> tuple[str, int, str, str]:
        return self.name, self.index, self.diff_area, self.backing

    def take(self, set_id: str, created: str = "2026-11-21T20:43:52Z") -> int:
        with self.area.write() as txn:
            return self.area.record_snapshot(txn, f"{set_id}-{self.name}", set_id, created).seq

    def path(self, rel: str) -> str:
        return os.path.join(self.backing, rel)


# ---- the tree-compare oracle -------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    kind: int
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    digest: str
    target: bytes
    xattrs: tuple[tuple[str, bytes], ...]


Manifest = dict[str, Meta]
ALL_FIELDS = ("kind", "size", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "nlink", "rdev", "digest",
              "target", "xattrs")
COPY_FIELDS = ("kind", "mode", "uid", "gid", "mtime_ns", "rdev", "digest", "target", "xattrs")


def manifest(root: str, *, hide_shadowfs: bool = True) -> tuple[Manifest, dict[str, int]]:
    """Every object under `root` (relative paths, root is "."), and each path's st_ino."""
    result: Manifest = {}
    inodes: dict[str, int] = {}

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        nlink = st.st_nlink
        if rel == "." and hide_shadowfs and os.path.isdir(os.path.join(path, ".shadowfs")):
            nlink -= 1  # the hidden directory is left out of the root's link count too
        result[rel] = Meta(kind, st.st_size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                           st.st_ctime_ns, nlink, st.st_rdev,
                           file_digest(path) if stat.S_ISREG(st.st_mode) else "",
                           os.fsencode(os.readlink(path)) if stat.S_ISLNK(st.st_mode) else b"",
                           xattrs_of(path))
        inodes[rel] = st.st_ino
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                if rel == "." and name == ".shadowfs" and hide_shadowfs:
                    continue
                visit(os.path.join(path, name), name if rel == "." else os.path.join(rel, name))

    visit(root, ".")
    return result, inodes


def link_groups(inodes: dict[str, int], tree: Manifest) -> set[frozenset[str]]:
    """Groups of non-directory paths that share an inode (hard links), singletons left out."""
    groups: dict[int, set[str]] = {}
    for rel, ino in inodes.items():
        if not stat.S_ISDIR(tree[rel].kind):
            groups.setdefault(ino, set()).add(rel)
    return {frozenset(group) for group in groups.values() if len(group) > 1}


def compare(expected: Manifest, actual: Manifest, fields: tuple[str, ...] = ALL_FIELDS,
            dir_fields: tuple[str, ...] | None = None) -> list[str]:
    """Human-readable differences (empty when equal on `fields`)."""
    problems = []
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            problems.append(f"{rel}: missing")
            continue
        if rel not in expected:
            problems.append(f"{rel}: unexpected")
            continue
        want, got = expected[rel], actual[rel]
        names = dir_fields if dir_fields is not None and stat.S_ISDIR(want.kind) else fields
        for name in names:
            if getattr(want, name) != getattr(got, name):
                problems.append(f"{rel}: {name} {getattr(want, name)!r} != {getattr(got, name)!r}")
    return problems


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
