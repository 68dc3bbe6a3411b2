"""The restore engine: apply an image's chain, in order, to a target tree — and never leave it.

One job: make each volume's target tree what the image says, exactly:
content (holes kept), modes, owners, atime/mtime, xattrs, symlinks, hard links,
fifos and device nodes, empty directories, and the deletions incrementals
recorded. The chain (full, then incrementals, or full then a differential) is
applied image by image; patch records write changed ranges into the file the
chain restored so far; partial-file records write their ranges into whatever
file is there.

Order of work:
1. `media.check_chain`: every checksum of every image of the chain, every
   marker, every record and the whole chain folded (`media.state`) — any
   problem stops the restore before anything is written;
2. per image and volume: deletions, then puts in path order; a new object is
   made under a temporary name in its directory, finished (data, owner, mode,
   xattrs, times) through its own descriptor, and renamed over the old name;
3. at the end, every directory that was put or changed gets its metadata from
   the final state, deepest first (so its mtime is the snapshot's).

With `hooks` (`backupjob`: the writers' PreRestore and PostRestore), each
image is preceded by `before_image`, which may refuse it (nothing of it is
written) or return relocations (new targets: component files restored under
another directory of the same volume) and directed targets (source ranges of a
restored file copied onto destination ranges, after the image's records), and
followed by `after_image`. Target trees are opened only once the first
image's checks passed.

Objects of the target that the chain never mentions are left alone (restoring
to the original place keeps newer files), except below paths an image deletes.

Safety, whatever the media or the target contain: every path is walked from
the target's root descriptor with O_NOFOLLOW on every component
(`safefs.Confined`, ``same_device``: no mount point is entered); a symlink,
file or fifo planted where a directory must be is removed, never followed; a
file is never opened for writing unless it is a regular file with a single
link (one with more links is copied first, so a hard link planted to a file
outside the target cannot be written, chmod-ed or chown-ed through); nothing
existing is written through a name: new content goes to a new inode.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from shadowfs.backup.engine import no_gc
from shadowfs.backup.fileset import spec_covers
from shadowfs.documents import RangeError, check_directed_ranges, validate_ranges
from shadowfs.errors import RestoreError as RestoreError
from shadowfs.linux.confined import (
    Confined,
    UnsafePath,
    check_rel_path,
    join,
    lstat_at,
    remove_tree_at,
    split_parent,
)
from shadowfs.linux.syscalls import data_regions
from shadowfs.media.reader import Image, chain_images
from shadowfs.media.records import Record
from shadowfs.media.state import ChainState
from shadowfs.media.verify import check_chain
from shadowfs.restore.putback import MetadataWriter

Progress = Callable[[dict[str, Any]], None]
TEMP_PREFIX = ".shadowfs-restore-"


@dataclass
class RestoreResult:
    """What a restore did."""

    image: str
    chain: list[str]
    targets: dict[str, str]
    files: int = 0
    bytes: int = 0
    removed: int = 0
    warnings: list[str] = field(default_factory=list)


def _temp_name() -> str:
    return TEMP_PREFIX + secrets.token_hex(8)


class _VolumeRestore:
    """Restore state of one volume's target tree."""

    def __init__(self, tree: Confined, volume: str, result: RestoreResult, progress: Progress | None) -> None:
        self.tree = tree
        self.volume = volume
        self.result = result
        self.progress = progress
        self.touched: set[str] = {""}
        self.meta = MetadataWriter(result.warnings)
        self.moved: dict[str, str] = {}  # recorded path -> where a new target put it

    def relocated(self, record: Record, moves: list[Relocation]) -> Record:
        """The record at the path a new target gives it (parents made), or as it is."""
        new = self.moved.get(record.path)
        for move in moves:
            found = move.target(record)
            if found is not None:
                new = found
                break
        if new is None or new == record.path:
            return record
        self.moved[record.path] = new
        parts = split_parent(new)[0].split("/") if split_parent(new)[0] else []
        for depth in range(1, len(parts) + 1):
            ancestor = "/".join(parts[:depth])
            if self.tree.lstat(ancestor) is None:
                self.tree.make_dir(ancestor, 0o755)
        link = self.moved.get(record.link, record.link) if record.link is not None else None
        return replace(record, path=new, link=link)

    # ---- helpers ----------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return f"{self.volume}:{path or '/'}"

    def _replace(self, dir_fd: int, temp: str, name: str, path: str) -> None:
        """Rename `temp` over `name` in `dir_fd`, removing a directory that is in the way."""
        st = lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self.tree.forget(path)
            remove_tree_at(dir_fd, name)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _write_blob(self, fd: int, image: Image, record: Record) -> None:
        data = record.data
        assert data is not None
        extents = iter(data.extents)
        offset, left = next(extents, (0, 0))
        for chunk in image.blob(data, label=self._where(record.path)) if data.has_blob else ():
            view = memoryview(chunk)
            while view:
                while left == 0:
                    offset, left = next(extents)
                step = min(left, len(view))
                written = os.pwrite(fd, view[:step], offset)
                view, offset, left = view[written:], offset + written, left - written
                self.result.bytes += written

    def _open_existing(self, dir_fd: int, name: str, path: str) -> tuple[int, str | None]:
        """A writable descriptor of the regular file `name`, and a temporary name when it had to be
        copied first (more than one link: it may be linked from outside the target)."""
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (self.tree.device is not None and st.st_dev != self.tree.device):
            os.close(fd)
            raise RestoreError(f"{self._where(path)}: not a regular file of the target")
        if st.st_nlink == 1:
            return fd, None
        temp = _temp_name()
        copy = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                       dir_fd=dir_fd)
        try:
            os.ftruncate(copy, st.st_size)
            for start, end in data_regions(fd, st.st_size):
                pos = start
                while pos < end:
                    chunk = os.pread(fd, min(1 << 20, end - pos), pos)
                    if not chunk:
                        break
                    os.pwrite(copy, chunk, pos)
                    pos += len(chunk)
        except BaseException:
            os.close(copy)
            os.unlink(temp, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        return copy, temp

    # ---- records ----------------------------------------------------------------------------

    def delete(self, record: Record) -> None:
        self.touched.add(split_parent(record.path)[0])
        if self.tree.remove(record.path):
            self.result.removed += 1

    def put(self, record: Record, image: Image, images: Mapping[str, Image]) -> None:
        path = record.path
        if record.kind == "dir":
            self.tree.make_dir(path, 0o700)
            self.touched.add(path)
            if path:
                self.touched.add(split_parent(path)[0])
            return
        dir_fd, name = self.tree.parent(path)
        self.touched.add(split_parent(path)[0])
        self.result.files += 1
        if record.link is not None:
            self._link(record, dir_fd, name)
        elif record.kind == "file":
            self._file(record, dir_fd, name, image, images)
        else:
            self._special(record, dir_fd, name)

    def _link(self, record: Record, dir_fd: int, name: str) -> None:
        assert record.link is not None
        leader_dir, leader_name = self.tree.parent(record.link)
        leader = lstat_at(leader_dir, leader_name)
        if leader is None or not stat.S_ISREG(leader.st_mode):
            raise RestoreError(f"{self._where(record.path)}: hard-link target {record.link!r} is not a "
                               "regular file in the target")
        here = lstat_at(dir_fd, name)
        if here is not None and (here.st_dev, here.st_ino) == (leader.st_dev, leader.st_ino):
            return
        temp = _temp_name()
        os.link(leader_name, temp, src_dir_fd=leader_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
        self._replace(dir_fd, temp, name, record.path)

    def _file(self, record: Record, dir_fd: int, name: str, image: Image,
              images: Mapping[str, Image]) -> None:
        data = record.data
        assert data is not None
        owner = images[data.image] if data.how == "ref" and data.image else image
        in_place = data.how in ("patch", "keep") or record.partial is not None
        existing = lstat_at(dir_fd, name)
        temp: str | None
        if in_place and (record.partial is None or (existing is not None and stat.S_ISREG(existing.st_mode))):
            fd, temp = self._open_existing(dir_fd, name, record.path)
            fresh = False
        else:
            temp = _temp_name()
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            fresh = True
        try:
            if fresh:
                os.ftruncate(fd, record.size)
            if data.how != "keep":
                self._write_blob(fd, owner, record)
            if data.how == "patch":
                os.ftruncate(fd, record.size)
            self.meta.on_fd(fd, record)
        except BaseException:
            os.close(fd)
            if temp is not None:
                os.unlink(temp, dir_fd=dir_fd)
            raise
        os.close(fd)
        if temp is not None:
            self._replace(dir_fd, temp, name, record.path)

    def _special(self, record: Record, dir_fd: int, name: str) -> None:
        temp = _temp_name()
        self.meta.make_special(dir_fd, temp, record, self._where(record.path))
        self._replace(dir_fd, temp, name, record.path)

    def finish(self, state: ChainState) -> None:
        """Metadata of every directory put or changed, deepest first, from the final state."""
        entries = state.volume(self.volume).entries
        for path in sorted(self.touched, key=lambda p: p.split("/") if p else [], reverse=True):
            entry = entries.get(path)
            if entry is None or entry.record.kind != "dir":
                continue
            self.meta.on_fd(self.tree.dir_fd(path), entry.record)


def _targets(volumes: Collection[str], to: str | None, targets: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for volume in volumes:
        if targets is not None and volume in targets:
            out[volume] = os.path.abspath(targets[volume])
        elif to is not None:
            out[volume] = os.path.join(os.path.abspath(to), volume)
        else:
            raise RestoreError(f"no target for volume {volume}: give `to` or a target for it")
    return out


def _open_target(volume: str, target: str, to: str | None, targets: Mapping[str, str] | None) -> Confined:
    """The volume's target root: made inside `to` without following anything, or the given directory."""
    if targets is not None and volume in targets:
        return Confined.open_root(target, same_device=True)
    assert to is not None
    os.makedirs(to, exist_ok=True)
    with Confined.open_root(to) as parent:
        fd = os.dup(parent.make_dir(volume, 0o700))
    return Confined(fd, same_device=True)


def restore(media: str, image_id: str, to: str | None = None, *, targets: Mapping[str, str] | None = None,
            volumes: Collection[str] | None = None, progress: Progress | None = None,
            hooks: RestoreHooks | None = None) -> RestoreResult:
    """Restore image `image_id` (with its chain) under `to/<volume>/`, or into `targets[volume]`.

    `hooks` run around each image (the writers' PreRestore and PostRestore) and may relocate
    component files (new targets) and copy ranges (directed targets) for that image."""
    with no_gc():
        return _restore(media, image_id, to, targets, volumes, progress, hooks)


def _restore(media: str, image_id: str, to: str | None, targets: Mapping[str, str] | None,
             volumes: Collection[str] | None, progress: Progress | None,
             hooks: RestoreHooks | None) -> RestoreResult:
    check_chain(media, image_id)
    chain = chain_images(media, image_id)
    images = {image.id: image for image in chain}
    state = ChainState(lambda owner, pack: images[owner].pack_size(pack))
    plan: list[tuple[Image, list[Record]]] = []
    for image in chain:
        records = list(image.records())
        state.apply(image.id, image.info.type, records)
        plan.append((image, records))
    names = sorted(state.volumes) if volumes is None else sorted(volumes)
    unknown = sorted(set(names) - set(state.volumes))
    if unknown:
        raise RestoreError(f"image {image_id} has no volume {', '.join(unknown)}")
    result = RestoreResult(image_id, [image.id for image in chain], _targets(names, to, targets))
    running = ChainState(lambda owner, pack: images[owner].pack_size(pack))
    with ExitStack() as stack:
        jobs: dict[str, _VolumeRestore] = {}
        done = 0
        for index, (image, records) in enumerate(plan):
            running.apply(image.id, image.info.type, records)
            last = index == len(plan) - 1
            steps = hooks.before_image(image, index, last, running) if hooks is not None else ImageSteps()
            _check_steps(steps, names)
            for volume in names:  # opened once the first image's checks passed: nothing is written before
                if volume not in jobs:
                    try:
                        tree = _open_target(volume, result.targets[volume], to, targets)
                    except (OSError, UnsafePath) as exc:
                        raise RestoreError(f"cannot open the target of volume {volume}: {exc}") from None
                    jobs[volume] = _VolumeRestore(stack.enter_context(tree), volume, result, progress)
            for volume in names:
                job = jobs[volume]
                moves = [r for r in steps.relocations if r.volume == volume]
                for record in records:
                    if record.volume != volume:
                        continue
                    try:
                        record = job.relocated(record, moves)
                        if record.op == "delete":
                            job.delete(record)
                        else:
                            job.put(record, image, images)
                    except UnsafePath as exc:
                        raise RestoreError(f"image {image.id}: {job._where(record.path)}: {exc}") from None
                    except OSError as exc:
                        raise RestoreError(f"image {image.id}: {job._where(record.path)}: "
                                           f"{exc.strerror or exc}") from None
                    done += 1
                    if progress is not None:
                        progress({"files": result.files, "bytes": result.bytes, "records": done,
                                  "path": f"{volume}:{record.path}"})
            for directed in steps.directed:
                _apply_directed(jobs, directed)
            if last:
                for volume in names:
                    try:
                        jobs[volume].finish(state)
                    except (OSError, UnsafePath) as exc:
                        raise RestoreError(f"volume {volume}: directory metadata: {exc}") from None
            if hooks is not None:
                hooks.after_image(image, index, last)
    return result


# ---- writers' restore instructions ------------------------------------------------------------------


@dataclass(frozen=True)
class Relocation:
    """A new target (AddNewTarget): files of one component matched by a spec go under `dest` instead.

    Paths are relative to the volume root; `component`/`writer` None match any record (deletes too).
    """

    volume: str
    prefix: str
    filespec: str
    recursive: bool
    dest: str
    component: str | None = None
    writer: str | None = None

    def target(self, record: Record) -> str | None:
        """The record's new path, or None when this relocation does not apply to it."""
        if record.volume != self.volume:
            return None
        if record.op == "put" and ((self.component is not None and record.component != self.component)
                                   or (self.writer is not None and record.writer != self.writer)):
            return None
        if not spec_covers("/" + self.prefix, self.filespec, self.recursive, "/" + record.path):
            return None
        rest = record.path[len(self.prefix):].lstrip("/") if self.prefix else record.path
        return join(self.dest, rest) if self.dest else rest


@dataclass(frozen=True)
class Directed:
    """A directed target: source ranges of a restored file copied onto destination ranges of another."""

    source_volume: str
    source_path: str
    source_ranges: tuple[tuple[int, int], ...]
    dest_volume: str
    dest_path: str
    dest_ranges: tuple[tuple[int, int], ...]


@dataclass
class ImageSteps:
    """What writers asked for around one image of the chain."""

    relocations: list[Relocation] = field(default_factory=list)
    directed: list[Directed] = field(default_factory=list)


class RestoreHooks(Protocol):
    """Called around each image of the chain (PreRestore / PostRestore with the writers)."""

    def before_image(self, image: Image, index: int, last: bool, state: ChainState) -> ImageSteps:
        """Before anything of `image` is written (`state`: the chain folded up to it); raise to refuse."""
        ...

    def after_image(self, image: Image, index: int, last: bool) -> None:
        """After every record of `image` (and its directed targets) was applied."""
        ...


def _check_steps(steps: ImageSteps, names: Collection[str]) -> None:
    for move in steps.relocations:
        if move.volume not in names:
            raise RestoreError(f"new target on volume {move.volume}, which this restore does not write")
        for path in (move.prefix, move.dest):
            if path:
                check_rel_path(path)
    for directed in steps.directed:
        for volume, path in ((directed.source_volume, directed.source_path),
                             (directed.dest_volume, directed.dest_path)):
            if volume not in names:
                raise RestoreError(f"directed target on volume {volume}, which this restore does not write")
            check_rel_path(path)
        try:
            check_directed_ranges(validate_ranges(directed.source_ranges),
                                  validate_ranges(directed.dest_ranges))
        except RangeError as exc:
            raise RestoreError(f"directed target {directed.source_path} -> {directed.dest_path}: "
                               f"{exc}") from None


def _apply_directed(jobs: Mapping[str, _VolumeRestore], directed: Directed) -> None:
    """Read the source ranges from the restored source file, then write them at the destination ranges."""
    source = jobs[directed.source_volume]
    source_path = source.moved.get(directed.source_path, directed.source_path)
    where = (f"directed target {directed.source_volume}:{source_path} -> "
             f"{directed.dest_volume}:{directed.dest_path}")
    try:
        fd = source.tree.open(source_path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, UnsafePath) as exc:
        raise RestoreError(f"{where}: cannot open the restored source: {exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RestoreError(f"{where}: the restored source is not a regular file")
        if max(o + n for o, n in directed.source_ranges) > st.st_size:
            raise RestoreError(f"{where}: source ranges run past the end of the file ({st.st_size} bytes)")
        pieces = [os.pread(fd, n, o) for o, n in directed.source_ranges]
    finally:
        os.close(fd)
    dest = jobs[directed.dest_volume]
    path = dest.moved.get(directed.dest_path, directed.dest_path)
    try:
        dir_fd, name = dest.tree.parent(path)
        existing = lstat_at(dir_fd, name)
        if existing is not None and stat.S_ISREG(existing.st_mode):
            out, temp = dest._open_existing(dir_fd, name, path)
        elif existing is None:
            temp = _temp_name()
            out = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dir_fd)
        else:
            raise RestoreError(f"{where}: the destination is not a regular file")
        try:
            for (offset, _), piece in zip(directed.dest_ranges, pieces, strict=True):
                view = memoryview(piece)
                while view:
                    written = os.pwrite(out, view, offset)
                    view, offset = view[written:], offset + written
                    dest.result.bytes += written
        finally:
            os.close(out)
        if temp is not None:
            dest._replace(dir_fd, temp, name, path)
    except (OSError, UnsafePath) as exc:
        raise RestoreError(f"{where}: {exc}") from None
