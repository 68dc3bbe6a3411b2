"""FUSE mounts by path: which exist (/proc/self/mounts), and unmounting the ones shadowfs made.

One job: let every process (daemon, tests, tools) find and remove FUSE mounts
without importing pyfuse3. `unmount` refuses anything that is not a FUSE
mount, so a caller that passes a path it mounted itself can never detach
somebody else's filesystem; `unmount_if_ours` goes further and leaves alone
FUSE mounts of other programs.
"""

from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger(__name__)

SHADOWFS_FUSE_TYPE = "fuse.shadowfs"


def unescape(field: str) -> str:
    """A path as /proc/self/mounts and mountinfo write it (octal escapes) -> the path."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fuse_mounts() -> dict[str, str]:
    """Mount point -> filesystem type for every FUSE mount in this namespace."""
    result: dict[str, str] = {}
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2].startswith("fuse"):
                result[unescape(fields[1])] = fields[2]
    return result


def _names(path: str) -> set[str]:
    """The names /proc/self/mounts may give mount point `path`: as given, and with the symlinks of
    its parent resolved. The mount point itself is never looked at: a stat of a FUSE mount whose
    server died while someone keeps its connection open waits until a new server answers."""
    absolute = os.path.abspath(path)
    return {absolute, os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))}


def top_mount(path: str) -> tuple[str, str] | None:
    """(filesystem type, "major:minor") of the mount on top at mount point `path`, or None.

    Read from /proc/self/mountinfo, where a mount stacked on another at the same point comes
    later; the path is not touched (a stat would block on a FUSE mount nobody serves)."""
    wanted = _names(path)
    found: tuple[str, str] | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            if len(fields) < 7 or unescape(fields[4]) not in wanted:
                continue
            after = fields.index("-", 6) if "-" in fields[6:] else -1
            if after > 0 and after + 1 < len(fields):
                found = (fields[after + 1], fields[2])
    return found


def is_fuse_mount(path: str) -> bool:
    return not _names(path).isdisjoint(fuse_mounts())


def unmount(path: str, *, lazy: bool = True) -> bool:
    """Unmount the FUSE mount at `path`; True if something was unmounted.

    Only ever touches a FUSE mount: callers pass paths they mounted themselves.
    """
    if not is_fuse_mount(path):
        return False
    args = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [path]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.warning("fusermount3 -u %s failed: %s", path, result.stderr.strip())
        return False
    return True


def unmount_if_ours(path: str) -> bool:
    """Lazily unmount a shadowfs FUSE mount at `path`; leave anything else alone."""
    mounts = fuse_mounts()
    kind = next((mounts[name] for name in _names(path) if name in mounts), None)
    if kind is None:
        return False
    if kind != SHADOWFS_FUSE_TYPE:
        log.warning("%s is a %s mount, not shadowfs; leaving it alone", path, kind)
        return False
    if unmount(path, lazy=True):
        log.info("unmounted stale shadowfs mount at %s", path)
        return True
    return False
