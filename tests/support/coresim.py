"""A driver that changes a plain backing directory through the production capture
code (the planner, the engine on the committer thread, the graveyard) exactly as
the live mount's handlers call it, only without FUSE and trio; and manifest
walkers for checking snapshots. Used by the core tests, which need no mount."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import CaptureEngine
from shadowfs.capture.graveyard import Graveyard, prepare_graveyard
from shadowfs.capture.planner import Capture, CapturePlanner
from shadowfs.capture.provenance import Caller
from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.linux.syscalls import list_xattrs
from shadowfs.snapshot.view import LiveObjects, SnapshotView


@dataclass(frozen=True)
class Entry:
    """What a tree compare looks at for one path."""

    kind: int
    ino: int
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    digest: str
    target: bytes
    xattrs: tuple[tuple[bytes, bytes], ...]


def manifest_live(root: str) -> dict[bytes, Entry]:
    """Walk the backing directory (without .shadowfs) and record every object."""
    result: dict[bytes, Entry] = {}
    root_b = os.fsencode(root)

    def visit(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            xattrs = tuple(sorted(list_xattrs(fd).items()))
        finally:
            os.close(fd)
        digest = ""
        target = b""
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
        nlink = st.st_nlink - 1 if rel == b"" else st.st_nlink  # .shadowfs is not shown
        result[rel] = Entry(stat.S_IFMT(st.st_mode), st.st_ino, st.st_size if not stat.S_ISDIR(st.st_mode)
                            else 0, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                            nlink, digest, target, xattrs)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                if rel == b"" and name == schema.HIDDEN_DIR:
                    continue
                visit(os.path.join(path, name), os.path.join(rel, name))

    visit(root_b, b"")
    return result


def manifest_view(view: SnapshotView) -> dict[bytes, Entry]:
    """Walk a snapshot through the read model and record every object."""
    result: dict[bytes, Entry] = {}

    def visit(ino: int, rel: bytes) -> None:
        record = view.attr(ino, with_xattrs=True)
        digest = ""
        if record.is_reg:
            digest = hashlib.sha256(view.read(ino, 0, record.size + 1, record.size)).hexdigest()
        result[rel] = Entry(stat.S_IFMT(record.mode), ino, 0 if record.is_dir else record.size,
                            record.mode, record.uid, record.gid, record.mtime_ns, record.ctime_ns,
                            record.nlink, digest, record.symlink_target,
                            tuple(sorted(record.xattrs.items())))
        if record.is_dir:
            for name, entry in view.listdir(ino):
                assert view.lookup(ino, name).ino == entry.ino
                visit(entry.ino, os.path.join(rel, name))

    visit(view.root_ino, b"")
    return result


class _Plan(Protocol):
    @property
    def capture(self) -> Capture | None: ...


P = TypeVar("P", bound=_Plan)


def _nothing(txn: object) -> None:
    return None


class CoreSim:
    """A backing directory changed only the way the live mount changes it: plan, capture, apply."""

    def __init__(self, backing: str, diff_area: str) -> None:
        self.backing = backing
        os.makedirs(backing, exist_ok=True)
        self.root_fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
        self.grave_fd = prepare_graveyard(self.root_fd)
        self.area = DiffArea.open(diff_area, volume="sim")
        self.committer = Committer(self.area.env, before_commit=self.area.before_commit)
        self.engine = CaptureEngine(self.area, self.root_fd)
        self.planner = CapturePlanner(self.area, self.engine, self.committer, self.newest)
        self.graveyard = Graveyard(self.grave_fd, self.engine, self.committer)
        self.live = LiveObjects(self.root_fd)
        self.caller: Caller | None = None  # who makes the changes, as a FUSE request would say

    def close(self) -> None:
        self.committer.stop()
        self.live.close()
        self.area.close()
        os.close(self.grave_fd)
        os.close(self.root_fd)

    # ---- helpers -----------------------------------------------------------

    @property
    def newest(self) -> int | None:
        with self.area.read() as txn:
            return self.area.newest_seq(txn)

    def _path(self, rel: str) -> str:
        return os.path.join(self.backing, rel)

    def _ino(self, rel: str) -> int:
        return os.lstat(self._path(rel)).st_ino if rel else os.fstat(self.root_fd).st_ino

    def _parent(self, rel: str) -> tuple[int, int, bytes]:
        """(inode, descriptor, name) of `rel`'s directory; the caller closes the descriptor."""
        head, tail = os.path.split(rel)
        fd = os.open(self._path(head) if head else self.backing, os.O_RDONLY | os.O_DIRECTORY)
        return os.fstat(fd).st_ino, fd, os.fsencode(tail)

    def _change(self) -> int | None:
        """Begin a change: the newest snapshot, as the mount process tells its planner after each
        commit and delete (tests may record snapshots straight into the diff area)."""
        self.planner.set_newest(self.newest)
        return self.planner.newest

    def _store(self, capture: Capture | None) -> None:
        if capture is not None:
            self.committer.run(capture.job)
            if capture.after is not None:
                capture.after()

    def _settle(self, plan: Callable[[], P]) -> P:
        while True:
            result = plan()
            if result.capture is None:
                return result
            self._store(result.capture)

    def _done(self) -> None:
        """End a change: the background jobs it submitted (births, deaths) are committed too."""
        self.committer.run(_nothing)

    # ---- snapshots ---------------------------------------------------------

    def snapshot(self, name: str) -> int:
        record = self.committer.run(
            lambda txn: self.area.record_snapshot(txn, name, name, "2026-01-01T00:00:00Z"))
        self.planner.set_newest(record.seq)
        return int(record.seq)

    def delete(self, seq: int) -> None:
        self.committer.run(lambda txn: self.area.delete_snapshot(txn, seq))
        self.committer.run(self.graveyard.collect)
        self.planner.set_newest(self.newest)

    def view(self, seq: int) -> SnapshotView:
        return SnapshotView(self.area, self.live, seq)

    # ---- changes -----------------------------------------------------------

    def write(self, rel: str, offset: int, data: bytes) -> None:
        seq = self._change()
        fd = os.open(self._path(rel), os.O_WRONLY)
        try:
            ino = os.fstat(fd).st_ino
            self._store(self.planner.write(seq, ino, fd, offset, len(data), caller=self.caller))
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def truncate(self, rel: str, size: int) -> None:
        self._change()
        fd = os.open(self._path(rel), os.O_WRONLY)
        try:
            ino = os.fstat(fd).st_ino
            self._store(self.planner.truncate(self.planner.seq_for(fd), ino, size, self.caller))
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def attr_change(self, rel: str, apply) -> None:  # type: ignore[no-untyped-def]
        self._change()
        fd = os.open(self._path(rel), os.O_PATH | os.O_NOFOLLOW)
        try:
            self._store(self.planner.objects(self.planner.seq_for(fd), attrs=[os.fstat(fd).st_ino],
                                             caller=self.caller, op="setattr"))
            apply(self._path(rel))
        finally:
            os.close(fd)

    def _make(self, rel: str, make: Callable[[int, bytes], None]) -> None:
        seq = self._change()
        parent, parent_fd, name = self._parent(rel)
        try:
            self._store(self.planner.objects(seq, entries=[(parent, name)], caller=self.caller, op="create"))
            make(parent_fd, name)
            self.planner.note_new(seq, os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_ino)
        finally:
            os.close(parent_fd)
        self._done()

    def create(self, rel: str, data: bytes = b"") -> None:
        def make(parent_fd: int, name: bytes) -> None:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=parent_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        self._make(rel, make)

    def mkdir(self, rel: str) -> None:
        self._make(rel, lambda parent_fd, name: os.mkdir(name, dir_fd=parent_fd))

    def symlink(self, target: str, rel: str) -> None:
        self._make(rel, lambda parent_fd, name: os.symlink(target, name, dir_fd=parent_fd))

    def mkfifo(self, rel: str) -> None:
        self._make(rel, lambda parent_fd, name: os.mkfifo(name, dir_fd=parent_fd))

    def link(self, src: str, rel: str) -> None:
        seq = self._change()
        parent, parent_fd, name = self._parent(rel)
        try:
            self._store(self.planner.objects(seq, attrs=[self._ino(src)], entries=[(parent, name)],
                                             caller=self.caller, op="link"))
            os.link(self._path(src), name, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(parent_fd)

    def unlink(self, rel: str) -> None:
        self._remove(rel, directory=False)

    def rmdir(self, rel: str) -> None:
        self._remove(rel, directory=True)

    def _remove(self, rel: str, *, directory: bool) -> None:
        self._change()
        parent, parent_fd, name = self._parent(rel)
        try:
            plan = self._settle(lambda: self.planner.removal(parent, parent_fd, name, directory=directory,
                                                             caller=self.caller))
            if directory:
                self.graveyard.rmdir(plan, parent_fd, name)
            else:
                self.graveyard.unlink(plan, parent_fd, name)
        finally:
            os.close(parent_fd)
        self._done()

    def rename(self, src: str, dst: str) -> None:
        self._change()
        old_parent, old_fd, old_name = self._parent(src)
        try:
            new_parent, new_fd, new_name = self._parent(dst)
            try:
                plan = self._settle(lambda: self.planner.rename(old_parent, old_fd, old_name,
                                                                new_parent, new_fd, new_name, self.caller))
                self.graveyard.rename(plan, old_fd, old_name, new_fd, new_name, 0)
            finally:
                os.close(new_fd)
        finally:
            os.close(old_fd)
        self._done()
