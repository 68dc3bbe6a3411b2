"""A driver that applies changes to a plain backing directory the way the live
mount does (capture through CaptureEngine first, then change), and a manifest
walker for checking snapshots. Used by the core tests, which need no FUSE."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from shadowfs.capture.engine import CaptureEngine, remove_from_graveyard
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


class CoreSim:
    """A backing directory changed only through capture-then-change, like the live mount."""

    def __init__(self, backing: str, diff_area: str) -> None:
        self.backing = backing
        os.makedirs(os.path.join(backing, ".shadowfs", "graveyard"), exist_ok=True)
        self.root_fd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
        self.grave_fd = os.open(os.path.join(backing, ".shadowfs", "graveyard"),
                                os.O_RDONLY | os.O_DIRECTORY)
        self.area = DiffArea.open(diff_area, volume="sim")
        self.engine = CaptureEngine(self.area, self.root_fd)
        self.live = LiveObjects(self.root_fd)

    def close(self) -> None:
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

    def _parent(self, rel: str) -> tuple[int, bytes]:
        head, tail = os.path.split(rel)
        return self._ino(head), os.fsencode(tail)

    def _capture(self, job) -> None:  # type: ignore[no-untyped-def]
        n = self.newest
        if n is None:
            return
        with self.area.write() as txn:
            job(txn, n)

    def _born_after(self, ino: int) -> bool:
        n = self.newest
        if n is None:
            return True
        with self.area.read() as txn:
            return self.engine.born_after(txn, n, ino)

    def _note_new(self, rel: str) -> None:
        ino = self._ino(rel)
        self._capture(lambda t, n: self.engine.note_new_object(t, n, ino))

    def _bury(self, rel: str) -> None:
        """Keep the object at `rel` alive in the graveyard if a snapshot can see it."""
        ino = self._ino(rel)
        if self._born_after(ino):
            return
        st = os.lstat(self._path(rel))
        if stat.S_ISDIR(st.st_mode):
            os.rename(self._path(rel), os.path.join(self.backing, ".shadowfs", "graveyard", str(ino)))
        elif st.st_nlink == 1:
            os.link(self._path(rel), os.path.join(self.backing, ".shadowfs", "graveyard", str(ino)),
                    follow_symlinks=False)
        else:
            return
        self._capture(lambda t, n: self.engine.note_death(t, n, ino))

    # ---- snapshots ---------------------------------------------------------

    def snapshot(self, name: str) -> int:
        with self.area.write() as txn:
            return self.area.record_snapshot(txn, name, name, "2026-01-01T00:00:00Z").seq

    def delete(self, seq: int) -> None:
        with self.area.write() as txn:
            self.area.delete_snapshot(txn, seq)
        with self.area.write() as txn:
            self.area.reclaim(txn)
            expired = self.area.graveyard_expired(txn)
            for ino in expired:
                remove_from_graveyard(self.grave_fd, ino)
                self.area.graveyard_remove(txn, ino)

    def view(self, seq: int) -> SnapshotView:
        return SnapshotView(self.area, self.live, seq)

    # ---- changes -----------------------------------------------------------

    def write(self, rel: str, offset: int, data: bytes) -> None:
        ino = self._ino(rel)
        self._capture(lambda t, n: self.engine.for_write(t, n, ino, offset, len(data)))
        fd = os.open(self._path(rel), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def truncate(self, rel: str, size: int) -> None:
        ino = self._ino(rel)
        self._capture(lambda t, n: self.engine.for_truncate(t, n, ino, size))
        os.truncate(self._path(rel), size)

    def attr_change(self, rel: str, apply) -> None:  # type: ignore[no-untyped-def]
        ino = self._ino(rel)
        self._capture(lambda t, n: self.engine.for_attr_change(t, n, ino))
        apply(self._path(rel))

    def _entry(self, rel: str) -> None:
        parent, name = self._parent(rel)
        self._capture(lambda t, n: self.engine.for_entry_change(t, n, parent, name))

    def create(self, rel: str, data: bytes = b"") -> None:
        self._entry(rel)
        with open(self._path(rel), "xb") as f:
            f.write(data)
        self._note_new(rel)

    def mkdir(self, rel: str) -> None:
        self._entry(rel)
        os.mkdir(self._path(rel))
        self._note_new(rel)

    def symlink(self, target: str, rel: str) -> None:
        self._entry(rel)
        os.symlink(target, self._path(rel))
        self._note_new(rel)

    def mkfifo(self, rel: str) -> None:
        self._entry(rel)
        os.mkfifo(self._path(rel))
        self._note_new(rel)

    def link(self, src: str, rel: str) -> None:
        ino = self._ino(src)
        self._entry(rel)
        self._capture(lambda t, n: self.engine.for_attr_change(t, n, ino))
        os.link(self._path(src), self._path(rel), follow_symlinks=False)

    def unlink(self, rel: str) -> None:
        ino = self._ino(rel)
        self._entry(rel)
        self._capture(lambda t, n: self.engine.for_attr_change(t, n, ino))
        self._bury(rel)
        os.unlink(self._path(rel))

    def rmdir(self, rel: str) -> None:
        if os.listdir(self._path(rel)):
            raise OSError(39, "not empty")
        ino = self._ino(rel)
        self._entry(rel)
        self._capture(lambda t, n: self.engine.for_attr_change(t, n, ino))
        before = os.path.exists(self._path(rel))
        self._bury(rel)
        if before and os.path.exists(self._path(rel)):
            os.rmdir(self._path(rel))

    def rename(self, src: str, dst: str) -> None:
        moved = self._ino(src)
        self._entry(src)
        self._entry(dst)
        self._capture(lambda t, n: self.engine.for_attr_change(t, n, moved))
        if os.path.lexists(self._path(dst)):
            victim = self._ino(dst)
            if victim == moved:
                return
            self._capture(lambda t, n: self.engine.for_attr_change(t, n, victim))
            if os.path.isdir(self._path(dst)) and not os.path.islink(self._path(dst)):
                if os.listdir(self._path(dst)):
                    raise OSError(39, "not empty")
            self._bury(dst)
        os.rename(self._path(src), self._path(dst))
