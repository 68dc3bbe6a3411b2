"""Who holds a directory tree: the processes with an open file, a working or root directory, or a
memory mapping in it, read from /proc in one pass.

One job: answer "does any process use this tree, and how?" for `volume add`,
which refuses a busy tree as umount refuses a busy mount. `holders(path)` lists
what it finds, one `Holder` per process and thing held; `summary` makes one
line of them.

Invariants:
- An object is in the tree when it lies on the tree's filesystem (same device)
  at the tree's own place or below it *in that filesystem*. Its place is the
  kernel's path of it (a /proc link, which has no symlink in it) with the mount
  it was reached through replaced by that mount's root (mountinfo). So the tree
  counts the same whether it was reached through a symlink, through a bind
  mount of it (or of a part of it) elsewhere, or from another mount namespace
  (a container it is bind-mounted into); a directory of the same filesystem
  bind-mounted into the tree from outside does not count. Resolved paths alone
  would miss a file opened through a bind mount elsewhere; device and inode
  alone cannot place a regular file, whose parent Linux does not tell.
- A descriptor's mount is known exactly (`mnt_id` in its fdinfo; mount ids are
  unique across namespaces). A working or root directory is placed through the
  mount whose mount point is the longest prefix of its path in the holder's
  namespace, a memory mapping (/proc/PID/maps gives its device) through the
  longest such mount of its device.
- Nothing is opened, stat'ed or read through a /proc link, so a hung FUSE or
  NFS server cannot stall the scan: a descriptor whose link is not a path
  (socket, pipe, anonymous inode) costs one readlink, any other one fdinfo
  read more, and its device is its mount's; a mapping of another device is
  skipped on its maps line.
- Processes that exit during the scan and /proc entries that cannot be read (a
  process that is not dumpable, a kernel thread) are skipped: `holders` raises
  OSError only when `path` itself cannot be opened. The calling process is
  never listed (its own scan opens a descriptor of the tree), nor are the
  processes in `ignore` and their descendants.
- A file deleted while open is placed where its last name was and shown with
  " (deleted)", as the kernel shows it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from shadowfs.linux.mounts import unescape

PROC = "/proc"
DELETED = " (deleted)"
OPEN_FILE = "open file"
WORKING_DIRECTORY = "working directory"
ROOT_DIRECTORY = "root directory"
MAPPING = "memory mapping"
LISTED_PER_PROCESS = 3  # things `summary` names for one process before "and N more"


@dataclass(frozen=True)
class Holder:
    """One thing one process holds in the tree; `path` is relative to the tree ("." for its top)."""

    pid: int
    command: str  # /proc/PID/comm
    what: str  # OPEN_FILE, WORKING_DIRECTORY, ROOT_DIRECTORY or MAPPING
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}): {self.what} {self.path}"


@dataclass(frozen=True)
class _Mount:
    dev: int  # os.makedev(major, minor) of its filesystem
    root: str  # the directory of the filesystem it shows
    point: str  # where it is mounted, in its namespace


class _Table:
    """One mount namespace's mounts (its /proc/PID/mountinfo), by id and by mount point."""

    def __init__(self, mounts: dict[int, _Mount]) -> None:
        self.by_id = mounts
        self.by_point: dict[str, list[_Mount]] = {}
        for mount in mounts.values():  # mountinfo order: a mount over another comes after it
            self.by_point.setdefault(mount.point, []).append(mount)

    @classmethod
    def read(cls, mountinfo: str) -> _Table | None:
        try:
            with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
                text = lines.read()
        except OSError:
            return None
        mounts: dict[int, _Mount] = {}
        for line in text.splitlines():
            fields = line.split(" ")
            if len(fields) < 5 or ":" not in fields[2]:
                continue
            major, _, minor = fields[2].partition(":")
            try:
                mounts[int(fields[0])] = _Mount(os.makedev(int(major), int(minor)), unescape(fields[3]),
                                                unescape(fields[4]))
            except ValueError:
                continue
        return cls(mounts)

    def at(self, path: str, dev: int | None = None) -> _Mount | None:
        """The mount `path` is reached through: the top one at the longest mount point above it
        (of device `dev`, when given)."""
        point = path
        while True:
            for mount in reversed(self.by_point.get(point, ())):
                if dev is None or mount.dev == dev:
                    return mount
            if point == "/":
                return None
            point = os.path.dirname(point)


class _Tree:
    """The tree being asked about: its device and its place in its filesystem."""

    def __init__(self, dev: int, top: str) -> None:
        self.dev = dev
        self.top = top
        self.maps_dev = f"{os.major(dev):02x}:{os.minor(dev):02x}"  # as /proc/PID/maps writes it

    def relative(self, mount: _Mount, link: str) -> str | None:
        """`link` (a kernel path reached through `mount`) relative to the tree, or None if outside."""
        path, deleted = (link[: -len(DELETED)], DELETED) if link.endswith(DELETED) else (link, "")
        place = _place(mount, path) if mount.dev == self.dev else None
        if place is None or not _within(place, self.top):
            return None
        if place == self.top:
            return "." + deleted
        return place[1 if self.top == "/" else len(self.top) + 1:] + deleted


class _Mounts:
    """The mount tables this scan needs: ours, and each other namespace's when a holder is in one."""

    def __init__(self) -> None:
        own = _Table.read(f"{PROC}/self/mountinfo")
        if own is None:
            raise OSError(errno.ENOENT, "cannot read the mount table", f"{PROC}/self/mountinfo")
        self.own = own
        self.own_ns = _readlink(f"{PROC}/self/ns/mnt")
        self.by_ns: dict[str, _Table] = {}

    def table(self, pid: int) -> _Table:
        """The mounts of `pid`'s namespace (ours when that cannot be told)."""
        ns = _readlink(f"{PROC}/{pid}/ns/mnt")
        if ns is None or ns == self.own_ns:
            return self.own
        table = self.by_ns.get(ns)
        if table is None:
            table = _Table.read(f"{PROC}/{pid}/mountinfo") or self.own
            self.by_ns[ns] = table
        return table

    def mount(self, mnt_id: int, table: _Table) -> _Mount | None:
        return self.own.by_id.get(mnt_id) or table.by_id.get(mnt_id)


def holders(path: str, *, ignore: Collection[int] = ()) -> list[Holder]:
    """Everything any process holds in the tree at `path` (a directory), by pid; [] when idle.

    `ignore`: pids whose process and descendants are not counted (the daemon passes its own).
    """
    mounts = _Mounts()
    tree = _tree(path, mounts.own)
    own = os.getpid()
    found: list[Holder] = []
    for pid in sorted(int(name) for name in _listdir(PROC) if name.isdigit()):
        if pid == own:
            continue
        held = _held(pid, tree, mounts)
        if held:
            command = _read(f"{PROC}/{pid}/comm").strip() or "?"
            found.extend(Holder(pid, command, what, where) for what, where in held)
    if ignore and found:
        skipped, parents = frozenset(ignore), dict[int, int | None]()
        found = [h for h in found if not _descends(h.pid, skipped, parents)]
    return found


def summary(found: Iterable[Holder], limit: int = 10) -> str:
    """`found` as one line: each process with what it holds, at most `limit` processes and
    `LISTED_PER_PROCESS` things each, then how many more there are."""
    by_pid: dict[int, list[Holder]] = {}
    for holder in found:
        by_pid.setdefault(holder.pid, []).append(holder)
    parts = []
    for pid, items in list(by_pid.items())[:limit]:
        things = ", ".join(f"{h.what} {h.path}" for h in items[:LISTED_PER_PROCESS])
        more = f" and {len(items) - LISTED_PER_PROCESS} more" if len(items) > LISTED_PER_PROCESS else ""
        parts.append(f"pid {pid} ({items[0].command}): {things}{more}")
    if len(by_pid) > limit:
        rest = len(by_pid) - limit
        parts.append(f"and {rest} more process{'es' if rest > 1 else ''}")
    return "; ".join(parts)


# ---- one process ------------------------------------------------------------------------------------


def _held(pid: int, tree: _Tree, mounts: _Mounts) -> list[tuple[str, str]]:
    """(what, path in the tree) for everything `pid` holds there, each once, in /proc's order."""
    base = f"{PROC}/{pid}"
    table = mounts.table(pid)
    held: dict[tuple[str, str], None] = {}

    def place(what: str, mount: _Mount | None, link: str) -> None:
        where = None if mount is None else tree.relative(mount, link)
        if where is not None:
            held[what, where] = None

    for what, name in ((WORKING_DIRECTORY, "cwd"), (ROOT_DIRECTORY, "root")):
        link = _readlink(f"{base}/{name}")
        if link is not None and link.startswith("/"):
            place(what, table.at(_undeleted(link)), link)
    for fd in _listdir(f"{base}/fd"):
        link = _readlink(f"{base}/fd/{fd}")
        if link is None or not link.startswith("/"):
            continue  # a socket, pipe or anonymous inode, or gone
        mnt_id = _mnt_id(f"{base}/fdinfo/{fd}")
        if mnt_id is not None:
            place(OPEN_FILE, mounts.mount(mnt_id, table), link)
    for line in _read(f"{base}/maps").splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[3] == tree.maps_dev and fields[4] != "0":
            link = fields[5]
            place(MAPPING, table.at(_undeleted(link), tree.dev), link)
    return list(held)


def _descends(pid: int, ignore: frozenset[int], parents: dict[int, int | None]) -> bool:
    """Whether `pid` is in `ignore` or a descendant of one of them (parents cached across calls)."""
    seen = 0
    current: int | None = pid
    while current is not None and current > 1 and seen < 4096:
        if current in ignore:
            return True
        if current not in parents:
            parents[current] = _ppid(current)
        current = parents[current]
        seen += 1
    return False


# ---- reading /proc, never raising ---------------------------------------------------------------------


def _tree(path: str, table: _Table) -> _Tree:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        link = os.readlink(f"{PROC}/self/fd/{fd}")
        mnt_id = _mnt_id(f"{PROC}/self/fdinfo/{fd}")
    finally:
        os.close(fd)
    mount = None if mnt_id is None else table.by_id.get(mnt_id)
    place = None if mount is None else _place(mount, link)
    if mount is None or place is None:
        raise OSError(errno.ENOENT, "cannot find the mount of", path)
    return _Tree(mount.dev, place)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return file.read()
    except OSError:
        return ""


def _mnt_id(fdinfo: str) -> int | None:
    """The `mnt_id:` of a /proc fdinfo file (the third line; read in one call)."""
    try:
        fd = os.open(fdinfo, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 512)
    except OSError:
        return None
    finally:
        os.close(fd)
    start = data.find(b"mnt_id:")
    if start < 0:
        return None
    try:
        return int(data[start + 7:].split(b"\n", 1)[0])
    except ValueError:
        return None


def _ppid(pid: int) -> int | None:
    data = _read(f"{PROC}/{pid}/stat")
    fields = data[data.rfind(")") + 1:].split()  # after the command, which may hold anything
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _place(mount: _Mount, path: str) -> str | None:
    """Where `path` (reached through `mount`) is in its filesystem, or None if not below the mount."""
    if not _within(path, mount.point):
        return None
    rest = path if mount.point == "/" else path[len(mount.point):]
    return (rest or "/") if mount.root == "/" else mount.root + rest


def _undeleted(link: str) -> str:
    return link[: -len(DELETED)] if link.endswith(DELETED) else link


def _within(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")
