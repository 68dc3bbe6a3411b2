"""Filesystem images on loop devices for tests and the bench: ext4, XFS and btrfs.

One job: make a small filesystem of a given kind in a file under a directory
the caller owns, attach it to a loop device, mount it there, and always
unmount and detach it again, also when the body fails.

Invariants:
- Only what this module made is touched: the loop device is the one
  `losetup --find --show` returned for our image file, the mount is our own
  mount point; cleanup unmounts that mount point (lazily if it is busy) and
  detaches that device, and never anything else.
- `unavailable(kind)` says why a kind cannot be made here (no mkfs, no loop
  devices, not root, the kernel lacks the filesystem), so tests can skip with
  that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

MKFS = {"ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
        "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"]}
MIN_SIZE = {"ext4": 64 << 20, "xfs": 300 << 20, "btrfs": 128 << 20}  # mkfs.xfs wants 300 MiB


def _kernel_has(kind: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1] == kind for line in f if line.strip()):
                return True
    except OSError:
        return False
    return subprocess.run(["modprobe", "-q", kind], capture_output=True, check=False).returncode == 0


def unavailable(kind: str) -> str | None:
    """Why an image of `kind` cannot be made and mounted here, or None if it can."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    if shutil.which(MKFS[kind][0]) is None:
        package = {"ext4": "e2fsprogs", "xfs": "xfsprogs", "btrfs": "btrfs-progs"}[kind]
        return f"{MKFS[kind][0]} is not installed ({package}; tools/test installs it)"
    if shutil.which("losetup") is None:
        return "losetup is not installed"
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        return "no loop devices (/dev/loop-control) in this environment"
    if not _kernel_has(kind):
        return f"the kernel has no {kind} filesystem"
    return None


@contextlib.contextmanager
def loop_filesystem(kind: str, base: Path, size: int | None = None) -> Iterator[Path]:
    """A fresh `kind` filesystem mounted at `base/<kind>-mnt` (image `base/<kind>.img`) for the block."""
    size = max(size or 0, MIN_SIZE[kind])
    image = base / f"{kind}.img"
    mountpoint = base / f"{kind}-mnt"
    mountpoint.mkdir(parents=True, exist_ok=False)
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(MKFS[kind] + [str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    mounted = False
    try:
        subprocess.run(["mount", "-t", kind, device, str(mountpoint)], check=True, capture_output=True)
        mounted = True
        yield mountpoint
    finally:
        if mounted:
            if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            image.unlink()
