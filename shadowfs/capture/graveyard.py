"""The graveyard: objects a snapshot still sees keep a name after they lose their last one.

One job: design §3.7. Removing or replacing the last name of an object that
existed at the newest snapshot must not free it: before the name goes, the
object gets a name in ``<backing>/.shadowfs/graveyard/<ino>`` (a hard link;
a directory, which is empty by then, is renamed there) and its death is
recorded in the diff area's ``graveyard`` database with the newest sequence.
An entry is removed once no remaining snapshot is as old as its death.

The changes that can remove a last name (unlink, rmdir, rename over a name)
are applied here, after their `planner` plan says what the object is and
whether a snapshot can see it: bury, apply the one system call, undo the burial
if the call failed, record the death.

Invariants:
- An object is buried before the call that removes its last name, so it is
  never unreachable by inode while a snapshot needs it.
- A failed change leaves the graveyard as it was (`unbury`).
- `reconcile` (at start) gives names a crash left without a record a record,
  or removes them; `collect` removes what no snapshot needs. Both run as
  committer jobs, so they are ordered with every other diff-area write.
- The graveyard directory is root's, mode 0700; nothing here follows a symlink.
- A grave's name is the decimal `BackingIno` of its object; the inode of a
  stat result or of a grave's name is typed where it is read.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from shadowfs.capture.committer import Committer
from shadowfs.capture.engine import CaptureEngine
from shadowfs.capture.planner import RemovalPlan, RenamePlan
from shadowfs.diffarea.area import Txn
from shadowfs.diffarea.schema import GRAVEYARD, HIDDEN_DIR, BackingIno, Seq
from shadowfs.linux.syscalls import renameat2

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def prepare_graveyard(root_fd: int) -> int:
    """Create ``.shadowfs/graveyard`` (root's, mode 0700) if needed; an O_RDONLY descriptor of it.

    Raises OSError when the backing directory does not let it be made.
    """
    fds: list[int] = []
    try:
        parent = root_fd
        for name in (HIDDEN_DIR, GRAVEYARD):
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            fds.append(fd)
            st = os.fstat(fd)
            if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
                os.chown(fd, 0, 0)
                os.chmod(fd, 0o700)
            parent = fd
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    os.close(fds[0])
    return fds[1]


def check_empty(parent_fd: int, name: bytes) -> None:
    """Raise ENOTEMPTY unless directory `name` is empty."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as entries:
            if next(entries, None) is not None:
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
    finally:
        os.close(fd)


class Graveyard:
    """The graveyard of one volume: its directory descriptor (owned by the caller)."""

    def __init__(self, fd: int, engine: CaptureEngine, committer: Committer) -> None:
        self.fd = fd
        self.engine = engine
        self.committer = committer

    # ---- changes that remove a name -------------------------------------------------------------

    def unlink(self, plan: RemovalPlan, parent_fd: int, name: bytes) -> None:
        """unlink `name`, burying its object first if it is its last name and a snapshot sees it."""
        st = plan.st
        bury = plan.seq is not None and st.st_nlink == 1 and not plan.born
        if bury:
            self.bury(parent_fd, name, st)
        try:
            os.unlink(name, dir_fd=parent_fd)
        except BaseException:
            if bury:
                self.unbury(parent_fd, name, st)
            raise
        if bury:
            assert plan.seq is not None
            self.note_death(plan.seq, BackingIno(st.st_ino))

    def rmdir(self, plan: RemovalPlan, parent_fd: int, name: bytes) -> None:
        """rmdir `name`; a directory a snapshot sees is moved into the graveyard instead."""
        if plan.seq is None or plan.born:
            os.rmdir(name, dir_fd=parent_fd)
            return
        check_empty(parent_fd, name)
        self.bury(parent_fd, name, plan.st)
        self.note_death(plan.seq, BackingIno(plan.st.st_ino))

    def rename(self, plan: RenamePlan, old_fd: int, old_name: bytes, new_fd: int, new_name: bytes,
               flags: int) -> None:
        """renameat2; a replaced object that loses its last name and that a snapshot sees is buried."""
        moved, target = plan.moved, plan.target
        bury = (flags == 0 and plan.seq is not None and target is not None
                and target.st_ino != moved.st_ino and not plan.born[BackingIno(target.st_ino)]
                and _replaces_last_name(moved, target, new_fd, new_name))
        if bury:
            assert target is not None
            self.bury(new_fd, new_name, target)
        try:
            renameat2(old_fd, old_name, new_fd, new_name, flags)
        except BaseException:
            if bury:
                assert target is not None
                self.unbury(new_fd, new_name, target)
            raise
        if bury:
            assert plan.seq is not None and target is not None
            self.note_death(plan.seq, BackingIno(target.st_ino))

    # ---- burial ---------------------------------------------------------------------------------

    def bury(self, dir_fd: int, name: bytes, st: os.stat_result) -> None:
        """Give the object behind `name` a name in the graveyard before it loses `name`."""
        grave = str(st.st_ino).encode()
        if stat.S_ISDIR(st.st_mode):
            os.rename(name, grave, src_dir_fd=dir_fd, dst_dir_fd=self.fd)
            return
        try:
            os.link(name, grave, src_dir_fd=dir_fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except FileExistsError:
            pass

    def unbury(self, dir_fd: int, name: bytes, st: os.stat_result) -> None:
        """Undo `bury` after the change it prepared failed."""
        grave = str(st.st_ino).encode()
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rename(grave, name, src_dir_fd=self.fd, dst_dir_fd=dir_fd)
            else:
                os.unlink(grave, dir_fd=self.fd)
        except OSError:
            log.exception("could not undo the graveyard entry of inode %d", st.st_ino)

    def note_death(self, seq: Seq, ino: BackingIno) -> None:
        """Record (in the background, ordered with every capture) that `ino` died under `seq`."""
        self.committer.submit(lambda txn: self.engine.note_death(txn, seq, ino))

    # ---- housekeeping (committer jobs) ----------------------------------------------------------

    def reconcile(self, txn: Txn) -> None:
        """Give graveyard names that a crash left without a record a record, or remove them."""
        area = self.engine.area
        newest = area.newest_seq(txn)
        with os.scandir(self.fd) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            if not name.isdigit():
                log.warning("unexpected name %r in the graveyard left alone", name)
                continue
            ino = BackingIno(int(name))
            if area.graveyard_has(txn, ino):
                continue
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                log.info("graveyard link of inode %d whose removal never happened: dropped", ino)
                os.unlink(name, dir_fd=self.fd)
            elif newest is None:
                self.free(ino)
            else:
                log.info("graveyard entry of inode %d without a record: kept until snapshot %d goes",
                         ino, newest)
                area.graveyard_add(txn, ino, newest)

    def collect(self, txn: Txn) -> int:
        """Free what deleted snapshots no longer need: block extents, graveyard objects; how many objects."""
        area = self.engine.area
        area.reclaim(txn)
        expired = area.graveyard_expired(txn)
        for ino in expired:
            self.free(ino)
            area.graveyard_remove(txn, ino)
        return len(expired)

    def free(self, ino: BackingIno) -> None:
        """Remove the graveyard object of `ino` (file or directory) that no snapshot needs."""
        name = str(ino)
        try:
            os.unlink(name, dir_fd=self.fd)
        except IsADirectoryError:
            _remove_tree(self.fd, name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EISDIR:
                raise
            _remove_tree(self.fd, name)


def _replaces_last_name(moved: os.stat_result, target: os.stat_result, dir_fd: int, name: bytes) -> bool:
    """Check that `moved` may replace `target`; True if the target loses its last name."""
    if stat.S_ISDIR(target.st_mode):
        if not stat.S_ISDIR(moved.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        check_empty(dir_fd, name)
        return True
    if stat.S_ISDIR(moved.st_mode):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    return target.st_nlink == 1


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove a graveyard directory; entries created in it after its death go too."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
