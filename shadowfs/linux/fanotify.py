"""Watch the changes that reach a backing filesystem, with fanotify (design §9.3).

One job: report every change made to objects under a backing directory by
anyone but the callers' own processes, so that a change that bypassed the
live mount (made before the mount was up, through a descriptor opened before
it, or while it was away) is found. One fanotify group marks the whole
backing filesystem (FAN_MARK_FILESYSTEM) and reports objects by file handle
and directory entry name (FAN_REPORT_DFID_NAME | FAN_REPORT_FID, plus
FAN_REPORT_TARGET_FID where the kernel has it, Linux 5.17); `ChangeWatch.read`
turns the queued events into `Change`s of objects under the backing
directory.

Invariants:
- Reading never blocks (the group is FAN_NONBLOCK; callers wait for
  readability, e.g. with trio.lowlevel.wait_readable). The kernel merges
  events of one object by one process while they are queued, so a `Change`
  may carry several FAN_* bits; its pid is the process (thread group) id.
- An object is under the backing directory when the directory its event
  names is (a file with names both inside and outside is judged by the name
  the change went through): the directory handle is opened
  (open_by_handle_at on the backing root, O_PATH) and its path
  (/proc/self/fd/N, which the kernel keeps exact for directories) checked to
  lie within `backing_path`. That path is cached per directory handle
  (bounded) and the cache is emptied whenever any directory moves, also by an
  ignored process.
- An event is judged by where things were while the events of its read
  happened, not only where they are at the read: a directory moved out of the
  tree by an event of the same read still counts as inside for the others,
  and one deleted by then is placed by the entry event that named it (its
  creation, move or deletion) in a placed parent. Both need the child's
  handle in entry events (FAN_REPORT_TARGET_FID); without it such events are
  lost. An event that cannot be placed is dropped and counted in
  `ChangeWatch.unplaced`.
- Nothing queued is lost by handing the group's descriptor to a successor
  process (`from_fd`): the marks and the queue belong to the group. Lost
  events (FAN_Q_OVERFLOW) raise `WatchOverflow` once what was queued has
  been read: the caller must then scan the tree (`linux.ctimescan`).
- `Change.ino` is exact (from the file handle: ext4 and XFS handles carry
  the inode number first, a btrfs handle its objectid and subvolume, which
  counts only for the backing tree's subvolume; else the opened handle's
  fstat), or 0 when it cannot be known (an entry event without
  FAN_REPORT_TARGET_FID whose name is gone, or an object of another btrfs
  subvolume).
  `Change.path` is where the object is (or was last seen) at the read, a
  hint for messages; None when unknown.
- Needs CAP_SYS_ADMIN (FAN_MARK_FILESYSTEM, FAN_UNLIMITED_QUEUE) and
  CAP_DAC_READ_SEARCH (open_by_handle_at): root. Failures raise
  `WatchUnavailable`, an OSError whose message says what is missing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from shadowfs.errors import WatchOverflow as WatchOverflow
from shadowfs.errors import WatchUnavailable as WatchUnavailable
from shadowfs.linux import fshandles, syscalls

# ---- <linux/fanotify.h> -----------------------------------------------------------------------------

# fanotify_init() flags
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000  # notification only: no permission events
FAN_UNLIMITED_QUEUE = 0x00000010  # no 16384-event queue limit
FAN_REPORT_TID = 0x00000100  # (not used: events then carry thread ids, not process ids)
FAN_REPORT_FID = 0x00000200  # the object by file handle instead of an open descriptor
FAN_REPORT_DIR_FID = 0x00000400  # the directory by file handle
FAN_REPORT_NAME = 0x00000800  # ... and the entry name in it
FAN_REPORT_TARGET_FID = 0x00001000  # the child of an entry event too (Linux 5.17)
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

# events (the mask of fanotify_mark() and of each event)
FAN_MODIFY = 0x00000002  # file written
FAN_ATTRIB = 0x00000004  # metadata changed (mode, owner, times, xattrs, link count)
FAN_MOVED_FROM = 0x00000040  # entry moved out of a directory
FAN_MOVED_TO = 0x00000080  # entry moved into a directory
FAN_CREATE = 0x00000100  # entry created
FAN_DELETE = 0x00000200  # entry deleted
FAN_DELETE_SELF = 0x00000400  # the object itself deleted
FAN_MOVE_SELF = 0x00000800  # the object itself moved
FAN_Q_OVERFLOW = 0x00004000  # events were lost
FAN_ONDIR = 0x40000000  # the object is a directory (also asks for events on directories)

# fanotify_mark() flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_FILESYSTEM = 0x00000100  # the whole filesystem of the object named

# struct fanotify_event_metadata and the info records that follow it
FANOTIFY_METADATA_VERSION = 3
FAN_NOFD = -1
FAN_EVENT_INFO_TYPE_FID = 1  # the object
FAN_EVENT_INFO_TYPE_DFID_NAME = 2  # a directory and an entry name in it ("." : the directory itself)
FAN_EVENT_INFO_TYPE_DFID = 3  # a directory
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME = 10  # FAN_RENAME's source (not asked for)
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME = 12  # FAN_RENAME's target (not asked for)

WATCHED = (FAN_MODIFY | FAN_ATTRIB | FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO
           | FAN_DELETE_SELF | FAN_MOVE_SELF | FAN_ONDIR)
ENTRY_EVENTS = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO  # change a directory's entries
MOVES = FAN_MOVED_FROM | FAN_MOVED_TO | FAN_MOVE_SELF
INIT_FLAGS = (FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
              | FAN_REPORT_DFID_NAME | FAN_REPORT_FID)
NEEDED_FLAGS = FAN_REPORT_DFID_NAME | FAN_REPORT_FID  # what `read` relies on in a group it is handed

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len
_FSID_AND_HANDLE = struct.Struct("=8sIi")  # fsid (__kernel_fsid_t), handle_bytes, handle_type
_U32 = struct.Struct("=I")
_HANDLE_RECORDS = (FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_DFID, FAN_EVENT_INFO_TYPE_DFID_NAME)

READ_SIZE = 256 * 1024  # bytes per read(2); every event is far smaller
READ_LIMIT = 16 * 1024 * 1024  # bytes per `read` call; the descriptor stays readable if more is queued
PLACE_CACHE = 4096  # directory handles whose place is remembered
MAX_NAMING_DEPTH = 256  # directories gone by the read placed through their parents, at most this deep

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


# ---- parsing -------------------------------------------------------------------------------------------


class Handle(NamedTuple):
    """A file handle as fanotify reports it (struct file_handle without its length)."""

    type: int
    data: bytes


class Event(NamedTuple):
    """One event as read: its mask, process, and the handles and name of its info records."""

    mask: int
    pid: int
    fd: int  # FAN_NOFD for a group that reports file handles
    dir: Handle | None  # DFID_NAME / DFID: the directory
    name: bytes | None  # DFID_NAME: the entry in `dir` (b"." : the event is on `dir` itself)
    obj: Handle | None  # FID: the object (the child of an entry event with FAN_REPORT_TARGET_FID)


def parse(buf: bytes) -> list[Event]:
    """The events in `buf`, as read(2) of a fanotify descriptor returns them.

    Raises ValueError for anything that is not what <linux/fanotify.h> describes.
    """
    events = []
    offset = 0
    while offset < len(buf):
        if len(buf) - offset < _METADATA.size:
            raise ValueError(f"fanotify: {len(buf) - offset} bytes left, less than an event's metadata")
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(buf, offset)
        if version != FANOTIFY_METADATA_VERSION:
            raise ValueError(f"fanotify: metadata version {version}, not {FANOTIFY_METADATA_VERSION}")
        if metadata_len < _METADATA.size or event_len < metadata_len or offset + event_len > len(buf):
            raise ValueError(f"fanotify: event of {event_len} bytes with {metadata_len} bytes of metadata "
                             f"at offset {offset} of {len(buf)}")
        directory: Handle | None = None
        name: bytes | None = None
        obj: Handle | None = None
        end = offset + event_len
        pos = offset + metadata_len
        while pos < end:
            if end - pos < _INFO_HEADER.size:
                raise ValueError(f"fanotify: {end - pos} bytes left in an event, less than an info header")
            info_type, _, info_len = _INFO_HEADER.unpack_from(buf, pos)
            if info_len < _INFO_HEADER.size or pos + info_len > end:
                raise ValueError(f"fanotify: info record of {info_len} bytes at offset {pos}, "
                                 f"event ends at {end}")
            if info_type in _HANDLE_RECORDS:
                handle, rest = _handle(buf, pos + _INFO_HEADER.size, pos + info_len)
                if info_type == FAN_EVENT_INFO_TYPE_FID:
                    obj = handle
                else:
                    directory = handle
                    if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                        name = rest.split(b"\0", 1)[0]
                        if not name:
                            raise ValueError("fanotify: DFID_NAME record without a name")
            pos += info_len
        events.append(Event(mask, pid, fd, directory, name, obj))
        offset = end
    return events


def _handle(buf: bytes, start: int, end: int) -> tuple[Handle, bytes]:
    """The file handle of a FID/DFID/DFID_NAME record's body, and what follows it (the name)."""
    if end - start < _FSID_AND_HANDLE.size:
        raise ValueError("fanotify: FID record shorter than its fsid and handle header")
    _, handle_bytes, handle_type = _FSID_AND_HANDLE.unpack_from(buf, start)
    data_start = start + _FSID_AND_HANDLE.size
    if data_start + handle_bytes > end:
        raise ValueError(f"fanotify: file handle of {handle_bytes} bytes overruns its record")
    return (Handle(handle_type, bytes(buf[data_start:data_start + handle_bytes])),
            bytes(buf[data_start + handle_bytes:end]))


def inode_in_handle(handle: Handle, btrfs_root: int | None = None) -> int | None:
    """The inode number a handle carries in the clear, else None.

    ext4 and XFS handles carry it first (a u32, or a u64 in XFS's 0x81/0x82 handles); a btrfs handle
    carries (objectid, subvolume root id, ...), and its objectid is the inode number only within that
    subvolume: it counts when the root is `btrfs_root` (the backing tree's subvolume).
    """
    found = fshandles.generation_in_handle(handle.type, handle.data)
    if found is None:
        return None
    root = fshandles.btrfs_root_in_handle(handle.type, handle.data)
    if root is not None and root != btrfs_root:
        return None
    return found[0]


# ---- the watch -----------------------------------------------------------------------------------------


class Change(NamedTuple):
    """An object under the backing directory that changed (one event, or several merged)."""

    ino: int  # the changed object; 0 if it cannot be known (see the module docstring)
    dir_ino: int | None  # the directory whose entries changed (create, delete, move), else None
    path: bytes | None  # relative to the backing directory (b"": the root); None if unknown
    mask: int  # FAN_* bits; FAN_ONDIR when the object is a directory
    pid: int  # the process (thread group) that made the change


_Place = tuple[bool, bytes | None]  # (known, path relative to the backing directory or None: outside)
_UNKNOWN: _Place = (False, None)


class ChangeWatch:
    """A fanotify group marking one backing filesystem; owns its descriptor, borrows the root's."""

    def __init__(self, fd: int, backing_root_fd: int, backing_path: str) -> None:
        """Take over `fd` (once this succeeds), a fanotify group reporting file handles and names."""
        root_path = os.fsencode(os.path.normpath(backing_path))
        if not root_path.startswith(b"/"):
            raise ValueError(f"backing path {backing_path!r} is not absolute")
        flags = _group_flags(fd)
        if flags & NEEDED_FLAGS != NEEDED_FLAGS:
            raise WatchUnavailable(errno.EINVAL, f"fanotify group {fd} does not report file handles and "
                                   f"names (flags {flags:#x}, needs {NEEDED_FLAGS:#x})")
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.fd = fd
        self.flags = flags
        self.root_fd = backing_root_fd
        self._root_dev = os.fstat(backing_root_fd).st_dev
        try:
            self._btrfs_root = fshandles.btrfs_root_in_handle(*fshandles.name_to_handle(backing_root_fd))
        except OSError:
            self._btrfs_root = None
        self.root_path = root_path
        self.unplaced = 0  # events dropped because the directory they name could not be placed
        self._paths: OrderedDict[Handle, bytes] = OrderedDict()  # directory handle -> absolute path

    @classmethod
    def open(cls, backing_root_fd: int, backing_path: str, *, target_fid: bool = True) -> ChangeWatch:
        """A new group marking the filesystem of `backing_root_fd` (FAN_REPORT_TARGET_FID where the
        kernel has it; `target_fid=False` leaves it out, as on a kernel before 5.17)."""
        fd = -1
        if target_fid:
            fd = _libc.fanotify_init(INIT_FLAGS | FAN_REPORT_TARGET_FID, os.O_RDONLY)
            if fd < 0 and ctypes.get_errno() != errno.EINVAL:
                _init_failed()
        if fd < 0:
            fd = _libc.fanotify_init(INIT_FLAGS, os.O_RDONLY)
            if fd < 0:
                _init_failed()
        try:
            if _libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, WATCHED, backing_root_fd,
                                   None) != 0:
                _mark_failed(backing_path)
            return cls(fd, backing_root_fd, backing_path)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, backing_root_fd: int, backing_path: str) -> ChangeWatch:
        """The group behind an inherited descriptor (its marks and queued events included)."""
        return cls(fd, backing_root_fd, backing_path)

    def fileno(self) -> int:
        return self.fd

    @property
    def reports_target(self) -> bool:
        """Whether entry events name their child (FAN_REPORT_TARGET_FID)."""
        return bool(self.flags & FAN_REPORT_TARGET_FID)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ChangeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------------------------

    def read(self, ignore_pids: AbstractSet[int] = frozenset()) -> list[Change]:
        """The changes under the backing directory queued now, without blocking (maybe none).

        Events of processes in `ignore_pids` are dropped (they still empty the place cache when a
        directory moves). Raises `WatchOverflow`, after reading everything queued, if events were lost.
        """
        events = self._read_events()
        if any(event.mask & FAN_Q_OVERFLOW for event in events):
            self._paths.clear()
            raise WatchOverflow("fanotify queue overflowed: changes were lost; scan the backing directory")
        if any(event.mask & FAN_ONDIR and event.mask & MOVES for event in events):
            self._paths.clear()  # paths below a moved directory changed; one may have left the tree
        return _Batch(self, events).changes(ignore_pids)

    def _read_events(self) -> list[Event]:
        events: list[Event] = []
        total = 0
        while total < READ_LIMIT:
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if not buf:
                break
            total += len(buf)
            parsed = parse(buf)
            for event in parsed:
                if event.fd >= 0:
                    os.close(event.fd)  # never for a FID group; a descriptor must not leak all the same
            events += parsed
        return events

    # ---- places -------------------------------------------------------------------------------------

    def open_handle(self, handle: Handle) -> int | None:
        """An O_PATH descriptor of the object behind `handle`, or None if it is gone."""
        try:
            return syscalls.open_by_handle(self.root_fd, handle.type, handle.data, os.O_PATH)
        except OSError as exc:
            # ENOMEM: Linux's answer (besides ESTALE) when it cannot connect a handle's inode to a
            # path any more, as for a file unlinked between the event and this read
            if exc.errno in (errno.ESTALE, errno.ENOENT, errno.ENOMEM):
                return None
            if exc.errno == errno.EPERM:
                raise WatchUnavailable(errno.EPERM, "open_by_handle_at needs CAP_DAC_READ_SEARCH: "
                                       "run as root") from None
            raise

    def inode_of(self, handle: Handle) -> int:
        """The inode number `handle` names (0 if it is not in the handle and the object is gone)."""
        ino = inode_in_handle(handle, self._btrfs_root)
        if ino is not None:
            return ino
        fd = self.open_handle(handle)
        if fd is None:
            return 0
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_ino if st.st_dev == self._root_dev else 0  # another btrfs subvolume: not ours

    def locate(self, handle: Handle) -> bytes | None:
        """The absolute path of the live object behind `handle` (opened by handle, its /proc link
        read), or None if it is gone. Cached for directories, whose path the kernel keeps exact."""
        cached = self._paths.get(handle)
        if cached is not None:
            self._paths.move_to_end(handle)
            return cached
        fd = self.open_handle(handle)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if st.st_nlink == 0:
                return None  # deleted, still referenced somewhere: its path says "(deleted)"
            path = os.readlink(syscalls.proc_path(fd).encode())
        finally:
            os.close(fd)
        if stat.S_ISDIR(st.st_mode):  # a file's path is one of its names, and moves without FAN_ONDIR
            self._paths[handle] = path
            while len(self._paths) > PLACE_CACHE:
                self._paths.popitem(last=False)
        return path

    def relative(self, path: bytes) -> bytes | None:
        """`path` relative to the backing directory (b"": the directory itself), None if outside."""
        root = self.root_path
        if path == root:
            return b""
        if root == b"/":
            return path[1:] if path.startswith(b"/") else None
        if path.startswith(root + b"/"):
            return path[len(root) + 1:]
        return None

    def lookup(self, dir_handle: Handle, name: bytes) -> int:
        """The inode of entry `name` of a directory now, 0 if either is gone (no target FID)."""
        fd = self.open_handle(dir_handle)
        if fd is None:
            return 0
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
                return 0
            raise
        finally:
            os.close(fd)


class _Batch:
    """The events of one `read`, placed.

    An object is under the backing directory if anything says it was while the batch's events
    happened: where it is now; under a directory that an event of the batch moved out of the tree
    (where that directory is now); or named by an entry event of the batch as the child of a
    directory under it (a directory may be gone by the time of the read). So a change made just
    before its directory left the tree, or was deleted, is not lost.
    """

    def __init__(self, watch: ChangeWatch, events: Iterable[Event]) -> None:
        self.watch = watch
        self.events = list(events)
        self.named: dict[Handle, list[tuple[Handle, bytes]]] = {}  # child -> [(directory, name)]
        for event in self.events:
            if event.obj is not None and event.dir is not None and event.name not in (None, b"."):
                assert event.name is not None
                self.named.setdefault(event.obj, []).append((event.dir, event.name))
        self.places: dict[Handle, _Place] = {}
        self._moved_out: list[tuple[bytes, bytes]] | None = None

    def moved_out(self) -> list[tuple[bytes, bytes]]:
        """(absolute path now, path relative to the backing directory before) of every directory an
        event of the batch moved from under the backing directory to outside it (with target FIDs)."""
        if self._moved_out is None:
            self._moved_out = []  # while being found: a directory's place asked meanwhile sees none
            found = []
            for event in self.events:
                if event.mask & FAN_MOVED_FROM and event.mask & FAN_ONDIR and event.obj is not None \
                        and event.dir is not None:
                    before = self.child_place(event.dir, event.name)[1]
                    now = self.watch.locate(event.obj)
                    if before is not None and now is not None and self.watch.relative(now) is None:
                        found.append((now, before))
            self._moved_out = found
        return self._moved_out

    def place(self, handle: Handle, depth: int = 0) -> _Place:
        """Where the object behind `handle` is, or was while this batch's events happened."""
        known = self.places.get(handle)
        if known is not None:
            return known
        self.places[handle] = _UNKNOWN  # while in progress: a cycle of namings ends here
        best = _UNKNOWN
        now = self.watch.locate(handle)
        if now is not None:
            best = (True, self.watch.relative(now))
            for moved, before in self.moved_out() if best[1] is None else ():
                if now == moved or now.startswith(moved + b"/"):
                    best = (True, before + now[len(moved):])
                    break
        if best[1] is None and depth < MAX_NAMING_DEPTH:
            for parent, name in reversed(self.named.get(handle, [])):
                there = self.child_place(parent, name, depth + 1)
                if there[1] is not None:
                    best = there
                    break
                if there[0]:
                    best = there  # outside, as far as that naming says
        self.places[handle] = best
        return best

    def child_place(self, parent: Handle, name: bytes | None, depth: int = 0) -> _Place:
        """Where entry `name` of directory `parent` is (unknown without a name)."""
        known, path = self.place(parent, depth)
        if path is None or name is None:
            return (known and path is None, None)
        if name == b".":
            return (True, path)
        return (True, path + b"/" + name if path else name)

    def changes(self, ignore_pids: AbstractSet[int]) -> list[Change]:
        result = []
        for event in self.events:
            if event.pid in ignore_pids:
                continue
            change = self.change(event)
            if change is not None:
                result.append(change)
        return result

    def change(self, event: Event) -> Change | None:
        """The event as a change under the backing directory; None if it is outside (or unplaced)."""
        watch = self.watch
        dir_ino: int | None = None
        if event.dir is not None and event.obj is None and event.name in (None, b"."):
            place = self.place(event.dir)  # an event on a directory itself
            ino = watch.inode_of(event.dir)
        elif event.dir is not None:
            place = self.child_place(event.dir, event.name)
            if event.mask & ENTRY_EVENTS:
                dir_ino = watch.inode_of(event.dir)
            if event.obj is not None:
                ino = watch.inode_of(event.obj)
            elif event.name is not None:
                ino = watch.lookup(event.dir, event.name)  # a kernel without FAN_REPORT_TARGET_FID
            else:
                ino = 0
        elif event.obj is not None:  # a non-directory with no parent reported (a self event)
            place = self.place(event.obj)
            ino = watch.inode_of(event.obj)
        else:
            return None  # neither object nor directory: nothing fanotify was asked for
        known, path = place
        if not known:
            watch.unplaced += 1
            return None
        if path is None:
            return None
        return Change(ino, dir_ino, path, event.mask, event.pid)


# ---- failures ------------------------------------------------------------------------------------------


def _group_flags(fd: int) -> int:
    """The fanotify_init flags of the group behind `fd` (from /proc/self/fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("fanotify flags:"):
                    return int(line.split()[1].split(":")[1], 16)
    except OSError as exc:
        raise WatchUnavailable(exc.errno or errno.EBADF, f"descriptor {fd}: {exc.strerror}") from None
    raise WatchUnavailable(errno.EINVAL, f"descriptor {fd} is not a fanotify group")


def _init_failed() -> None:
    err = ctypes.get_errno()
    reason = {
        errno.EPERM: "fanotify needs CAP_SYS_ADMIN: run as root",
        errno.EINVAL: "this kernel's fanotify cannot report file handles and names (Linux 5.9 or later)",
        errno.ENOSYS: "this kernel has no fanotify (CONFIG_FANOTIFY)",
        errno.EMFILE: "too many fanotify groups (fs.fanotify.max_user_groups) or descriptors",
    }.get(err, os.strerror(err))
    raise WatchUnavailable(err, f"fanotify_init: {reason}")


def _mark_failed(path: str) -> None:
    err = ctypes.get_errno()
    reason = {
        errno.EPERM: "marking a whole filesystem needs CAP_SYS_ADMIN: run as root",
        errno.ENODEV: "its filesystem cannot report file handles",
        errno.EXDEV: "its filesystem cannot be watched as a whole (a subvolume or a bind mount of part)",
        errno.EOPNOTSUPP: "its filesystem cannot report file handles",
        errno.ENOSPC: "too many fanotify marks (fs.fanotify.max_user_marks)",
    }.get(err, os.strerror(err))
    raise WatchUnavailable(err, f"fanotify_mark({path}): {reason}")
