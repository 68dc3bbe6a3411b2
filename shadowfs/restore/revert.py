"""Applying a revert: the live volume's paths made what they were in a snapshot, in place.

One job: carry out a `snapshot.revertplan.RevertPlan` through the volume's
live mount, so that the capture rule protects every change it makes (the
snapshot taken just before the revert, and every older one, stay exact: design
§6.5). What to write comes from the snapshot's tree in the browser.

Order of work:
1. a staging directory is made (in the directory that holds the first scope,
   or at the volume root for the whole volume);
2. every live entry that is not as in the snapshot, in a directory that stays,
   is renamed into the staging directory (a directory goes with everything in
   it);
3. the snapshot's missing entries are made, parents first: a reused object is
   renamed there from where it is now (the staging directory, or inside a
   directory that is going), or linked (another name of a file); any other
   object is made from the snapshot under a temporary name, finished (data
   with its holes, owner, mode, xattrs, times) and renamed into place;
4. reused objects that differ are changed in place: size, the bytes that
   differ, owner, mode, xattrs, times;
5. the staging directory, with what no entry took back, is removed;
6. directory metadata, deepest first (so every mtime is the snapshot's); the
   directories that hold the scopes get back the times they had before.

Invariants:
- Only the live mount is written, and only below the scopes (and the staging
  directory, gone at the end); nothing is followed: every name is reached
  from a descriptor of its directory, and directories are tracked by identity
  while they move, each opened descriptor checked to be the directory expected
  (its inode number) and on the live mount's filesystem.
- Nothing is replaced by a rename: entries are made with RENAME_NOREPLACE,
  link, mkdir or mknod, which fail when something appeared meanwhile. A revert
  that meets a change made behind it, a busy file (ETXTBSY), a full disk or
  any other error stops there with a `RevertError` saying where, how many
  changes were made and that the staging directory still holds what was moved
  aside; the snapshot taken before is the way back.
- The ctime of every changed object is the time of the revert (it cannot be
  set); an object made from the snapshot has a new inode number.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from shadowfs.diffarea.schema import BackingIno
from shadowfs.errors import RestoreError, RevertError, UnsafePath
from shadowfs.linux.confined import DIR_FLAGS, Confined, join, remove_tree_at, split_parent
from shadowfs.linux.fdcache import DescriptorCache
from shadowfs.linux.syscalls import RENAME_NOREPLACE, renameat2
from shadowfs.restore.putback import MetadataWriter
from shadowfs.snapshot.revertplan import DirKey, RevertPlan
from shadowfs.snapshot.tree import INO_MASK, Meta, SourceTree, SparseReader

STAGE_PREFIX = ".shadowfs-revert-"
READ_CHUNK = 1 << 20
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Key = int | str | tuple[str, int]  # a live directory: its inode, a path (outside the scopes), or made here
STAGE: Key = ("stage", 0)


@dataclass
class RevertResult:
    """What a revert did."""

    changes: int = 0  # system calls that changed the volume
    warnings: list[str] = field(default_factory=list)


class _Revert:
    def __init__(self, live_root: str, snap: SourceTree, plan: RevertPlan) -> None:
        self.plan = plan
        self.snap = snap
        self.result = RevertResult()
        self.meta = MetadataWriter(self.result.warnings)
        self.live = Confined.open_root(live_root, same_device=True)
        self.device = os.fstat(self.live.root_fd).st_dev
        self.dirs: DescriptorCache[Key] = DescriptorCache(256, self._open_dir)
        self.loc: dict[Key, tuple[Key, str]] = {}  # a directory that moves: where it is now
        self.expect: dict[Key, int] = {}  # the inode number its descriptor must have
        self.spare: dict[BackingIno, list[tuple[Key, str]]] = {}  # names of reused objects to take
        self.names: dict[BackingIno, list[tuple[Key, str]]] = {}  # names objects have where they belong
        self.touched: set[Key] = set()
        self.moved: set[Key] = set()
        self.stage_name = STAGE_PREFIX + secrets.token_hex(6)
        holders = [split_parent(s)[0] for s in plan.scopes if s]
        self.holders = sorted(set(holders))
        self.stage_parent: Key = holders[0] if holders else ""
        self.stage_made = False
        self.saved_times: dict[str, tuple[int, int]] = {}
        self.where = ""

    def close(self) -> None:
        self.dirs.close()
        self.live.close()

    # ---- directories by identity ------------------------------------------------------------

    def skey(self, plan_key: DirKey) -> Key:
        """The live directory a snapshot directory of the plan is, or will be once made."""
        if isinstance(plan_key, str) or plan_key == self.plan.root_ino:
            return plan_key if isinstance(plan_key, str) else ""
        return plan_key if plan_key in self.plan.reused else ("new", plan_key)

    def lkey(self, plan_key: DirKey) -> Key:
        """The live directory a live directory of the plan is."""
        if isinstance(plan_key, str) or plan_key == self.plan.root_ino:
            return plan_key if isinstance(plan_key, str) else ""
        return plan_key

    def path_of(self, key: Key) -> str:
        """Where directory `key` is now, relative to the volume root (for messages)."""
        if isinstance(key, str):
            return key
        place = self.loc.get(key)
        if place is None:
            return f"(directory {key})"
        return join(self.path_of(place[0]), place[1])

    def _open_dir(self, key: Key) -> int:
        if isinstance(key, str):
            return os.dup(self.live.dir_fd(key))
        parent, name = self.loc[key]
        with self.dirs.borrow(parent) as parent_fd:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        st = os.fstat(fd)
        expected = self.expect.get(key)
        if st.st_dev != self.device or (expected is not None and st.st_ino & INO_MASK != expected):
            os.close(fd)
            raise RevertError(f"{self.path_of(key)}: not the directory expected (the volume changed while "
                              "being reverted)")
        return fd

    @contextmanager
    def dir(self, key: Key) -> Iterator[int]:
        with self.dirs.borrow(key) as fd:
            yield fd

    # ---- steps ------------------------------------------------------------------------------

    def prepare(self) -> None:
        plan = self.plan
        for path, ino in plan.live.order:
            if path and plan.live.objects[ino].meta.kind == "dir":
                parent, name = plan.live.entry_of[path]
                self.loc[self.lkey(ino)] = (self.lkey(parent), name)
                self.expect[self.lkey(ino)] = plan.live.objects[ino].meta.ino  # a stand-in's own
        for ino in plan.reused:
            obj = plan.live.objects[ino]
            have = [plan.live.entry_of[p] for p in obj.paths if p in plan.live.entry_of]
            self.spare[ino] = [(self.lkey(e[0]), e[1]) for e in have if e not in plan.matched]
            self.names[ino] = [(self.lkey(e[0]), e[1]) for e in have if e in plan.matched]
        for holder in self.holders:
            st = self.live.lstat(holder)
            if st is not None:
                self.saved_times[holder] = (st.st_atime_ns, st.st_mtime_ns)

    def make_stage(self) -> None:
        self.where = join(self.path_of(self.stage_parent), self.stage_name)
        with self.dir(self.stage_parent) as fd:
            os.mkdir(self.stage_name, 0o700, dir_fd=fd)
            self.expect[STAGE] = os.stat(self.stage_name, dir_fd=fd, follow_symlinks=False).st_ino & INO_MASK
        self.loc[STAGE] = (self.stage_parent, self.stage_name)
        self.stage_made = True
        self.touched.add(self.stage_parent)
        self.result.changes += 1

    def _rename(self, src: tuple[Key, str], dst: tuple[Key, str]) -> None:
        self.where = join(self.path_of(src[0]), src[1])
        with self.dir(src[0]) as src_fd, self.dir(dst[0]) as dst_fd:
            renameat2(src_fd, os.fsencode(src[1]), dst_fd, os.fsencode(dst[1]), RENAME_NOREPLACE)
        self.touched.update((src[0], dst[0]))
        self.result.changes += 1

    def vacate(self) -> None:
        for number, entry in enumerate(self.plan.vacate):
            ino = self.plan.live.entries[entry]
            src = (self.lkey(entry[0]), entry[1])
            dst = (STAGE, str(number))
            self._rename(src, dst)
            if self.plan.live.objects[ino].meta.kind == "dir":
                self.loc[self.lkey(ino)] = dst
            spares = self.spare.get(ino)
            if spares is not None and src in spares:
                spares[spares.index(src)] = dst

    def add(self) -> None:
        for path, entry, ino in self.plan.adds:
            self.where = path
            dst = (self.skey(entry[0]), entry[1])
            meta = self.plan.snap.objects[ino].meta
            placed = self.names.setdefault(ino, [])
            spares = self.spare.get(ino)
            if ino in self.plan.reused and spares:
                src = spares.pop(0)
                self._rename(src, dst)
                if meta.kind == "dir":
                    self.loc[ino] = dst
                    self.moved.add(ino)
            elif placed and meta.kind != "dir":
                self._link(placed[0], dst)
            elif ino in self.plan.reused:
                raise RevertError(f"{path}: the directory was not found where the plan saw it")
            else:
                self._make(path, meta, dst)
            placed.append(dst)
            self.where = path

    def _link(self, src: tuple[Key, str], dst: tuple[Key, str]) -> None:
        with self.dir(src[0]) as src_fd, self.dir(dst[0]) as dst_fd:
            os.link(src[1], dst[1], src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        self.touched.add(dst[0])
        self.result.changes += 1

    def _make(self, path: str, meta: Meta, dst: tuple[Key, str]) -> None:
        """Make the object of the snapshot at `path` under `dst`: a directory empty (its metadata
        comes last), anything else whole, under a temporary name first."""
        self.touched.add(dst[0])
        with self.dir(dst[0]) as dir_fd:
            if meta.kind == "dir":
                os.mkdir(dst[1], 0o700, dir_fd=dir_fd)
                key = ("new", meta.ino)
                self.loc[key] = dst
                self.expect[key] = os.stat(dst[1], dir_fd=dir_fd, follow_symlinks=False).st_ino & INO_MASK
                self.result.changes += 1
                return
            temp = STAGE_PREFIX + secrets.token_hex(6)
            if meta.kind == "file":
                self._copy_file(path, meta, dir_fd, temp)
            else:
                self.meta.make_special(dir_fd, temp, meta, path)
            try:
                renameat2(dir_fd, os.fsencode(temp), dir_fd, os.fsencode(dst[1]), RENAME_NOREPLACE)
            except BaseException:
                os.unlink(temp, dir_fd=dir_fd)
                raise
        self.result.changes += 1

    def _copy_file(self, path: str, meta: Meta, dir_fd: int, temp: str) -> None:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, meta.size)
            with self.snap.source(path) as source:
                for offset, piece in SparseReader(source, meta.size).pieces():
                    _write_all(fd, piece, offset)
            self.meta.on_fd(fd, meta)
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=dir_fd)
            raise
        os.close(fd)

    def fix(self) -> None:
        """Data and metadata of reused objects that differ (directories' metadata comes last)."""
        for path, ino in self.plan.snap.order:
            fix = self.plan.fixes.get(ino)
            if fix is None or ino not in self.plan.reused or self.plan.snap.objects[ino].paths[0] != path:
                continue
            meta = self.plan.snap.objects[ino].meta
            if meta.kind == "dir":
                continue
            self.where = path
            key, name = self.names[ino][0]
            with self.dir(key) as dir_fd:
                if meta.kind != "file":
                    self.meta.on_special(dir_fd, name, meta, path)
                else:
                    fd = os.open(name, (os.O_RDWR if fix.data is not None else os.O_RDONLY) | FILE_FLAGS,
                                 dir_fd=dir_fd)
                    try:
                        if os.fstat(fd).st_ino & INO_MASK != self.plan.live.objects[ino].meta.ino:
                            raise RevertError(f"{path}: replaced while being reverted")
                        if fix.data is not None:
                            os.ftruncate(fd, fix.data.size)
                            self._write_ranges(path, fd, fix.data.writes)
                        self.meta.on_fd(fd, meta)
                    finally:
                        os.close(fd)
            self.result.changes += 1

    def _write_ranges(self, path: str, fd: int, ranges: list[tuple[int, int]]) -> None:
        if not ranges:
            return
        source = self.snap.open_file(path)
        try:
            for offset, length in ranges:
                done = 0
                while done < length:
                    chunk = os.pread(source, min(READ_CHUNK, length - done), offset + done)
                    if not chunk:
                        raise RevertError(f"{path}: the snapshot's copy ended early")
                    _write_all(fd, chunk, offset + done)
                    done += len(chunk)
        finally:
            os.close(source)

    def drop_stage(self) -> None:
        if not self.stage_made:
            return
        self.where = self.path_of(STAGE)
        with self.dir(self.stage_parent) as fd:
            remove_tree_at(fd, self.stage_name)
        self.stage_made = False
        self.result.changes += 1

    def directories(self) -> None:
        """Every directory made, moved, changed or whose entries changed gets the snapshot's
        metadata, deepest first; the holders of the scopes get their times back."""
        plan = self.plan
        dirs = [(path, ino) for path, ino in plan.snap.order
                if plan.snap.objects[ino].meta.kind == "dir" and plan.snap.objects[ino].paths[0] == path]
        for path, ino in sorted(dirs, key=lambda item: item[0].split("/") if item[0] else [], reverse=True):
            key = self.skey(ino)
            if not (ino not in plan.reused or ino in plan.fixes or key in self.touched or key in self.moved):
                continue
            self.where = path
            with self.dir(key) as fd:
                self.meta.on_fd(fd, plan.snap.objects[ino].meta)
            self.result.changes += 1
        for holder, (atime, mtime) in self.saved_times.items():
            if holder in self.touched:
                self.where = holder
                with self.dir(holder) as fd:
                    os.utime(fd, ns=(atime, mtime))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def revert(live_root: str, snap: SourceTree, plan: RevertPlan) -> RevertResult:
    """Carry out `plan` on the live volume mounted at `live_root`, reading from `snap` (the snapshot's
    tree); RevertError, saying what was done and what is left, if it cannot be finished."""
    job = _Revert(live_root, snap, plan)
    try:
        if plan.empty:
            return job.result
        job.prepare()
        job.make_stage()
        job.vacate()
        job.add()
        job.fix()
        job.drop_stage()
        job.directories()
        return job.result
    except (OSError, UnsafePath, RestoreError, RevertError) as exc:
        raise RevertError(_stopped(job, exc)) from None
    finally:
        job.close()


def _stopped(job: _Revert, exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ETXTBSY:
        reason += " (a program is running from it)"
    text = f"revert stopped at {job.where or '/'}: {reason}; {job.result.changes} change(s) had been made"
    if job.stage_made:
        text += f"; what was moved aside is in {job.path_of(STAGE)} (delete it once done with it)"
    return text


__all__ = ["STAGE_PREFIX", "RevertResult", "revert"]

