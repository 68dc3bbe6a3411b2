"""File handles of the live mount that say what they open.

One job: pack an open file's or directory's backing inode and open flags into
the 64-bit handle the kernel keeps for it, and unpack them. A mount process
that takes over a FUSE connection from a dead predecessor (`live.handoff`)
gets reads, writes and readdirs on handles it never gave out; with the handle
alone it reopens the same object with the same flags, so the applications
holding those files notice nothing.

Layout, from the high bits: the inode number (`INO_BITS`), a serial that
tells apart concurrent opens of one inode with the same flags (`SERIAL_BITS`),
then the flags (`FLAG_BITS`): the access mode, O_SYNC, O_DSYNC, O_NOATIME, and
a bit for directories.

Invariants:
- `decode(encode(ino, flags, serial))` gives back `ino`, the kept flags and
  whether it is a directory, for every inode below 2**INO_BITS.
- Flags that a reopen must not repeat (O_CREAT, O_EXCL, O_TRUNC) or that the
  mount drops on every open anyway (O_APPEND, O_DIRECT) are never kept.
- Handles are never 0 (pyfuse3 and libfuse treat 0 as "no handle").
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

INO_BITS = 44
SERIAL_BITS = 12
FLAG_BITS = 8
SERIALS = 1 << SERIAL_BITS

DIRECTORY = 1 << 30  # an open flag value of no meaning to open(2) here: "this is a directory handle"

_KEPT = ((os.O_SYNC, 1 << 2), (os.O_DSYNC, 1 << 3), (os.O_NOATIME, 1 << 4))
_DIR_BIT = 1 << 7


@dataclass(frozen=True)
class Handle:
    ino: int
    flags: int  # for os.open: the access mode and the kept flags
    directory: bool


def encode(ino: int, flags: int, serial: int) -> int:
    """The handle of an open of `ino` with `flags` (`DIRECTORY` for a directory)."""
    if not 0 < ino < 1 << INO_BITS:
        raise ValueError(f"inode number {ino} does not fit in a live-mount file handle")
    bits = _DIR_BIT if flags & DIRECTORY else flags & os.O_ACCMODE
    for flag, bit in _KEPT:
        if flags & flag == flag and not flags & DIRECTORY:
            bits |= bit
    return (ino << (SERIAL_BITS + FLAG_BITS)) | ((serial % SERIALS) << FLAG_BITS) | bits


def decode(fh: int) -> Handle:
    """What `encode` packed into `fh`."""
    bits = fh & ((1 << FLAG_BITS) - 1)
    ino = fh >> (SERIAL_BITS + FLAG_BITS)
    if bits & _DIR_BIT:
        return Handle(ino, os.O_RDONLY | os.O_DIRECTORY, True)
    flags = bits & os.O_ACCMODE
    for flag, bit in _KEPT:
        if bits & bit:
            flags |= flag
    return Handle(ino, flags, False)


class OpenHandles(Generic[T]):
    """The open files (or directories) of a mount, by handle: those this process gave out, and
    those of a predecessor, which `get` opens again from the handle alone (`reopen`)."""

    def __init__(self, reopen: Callable[[Handle], T]) -> None:
        self._open: dict[int, T] = {}
        self._reopen = reopen
        self._serial = 0

    def add(self, ino: int, flags: int, value: T) -> int:
        """A new handle for `value`, an open of `ino` with `flags` (`DIRECTORY` for a directory)."""
        for _ in range(SERIALS):
            self._serial += 1
            fh = encode(ino, flags, self._serial)
            if fh not in self._open:
                self._open[fh] = value
                return fh
        raise OSError(errno.ENFILE, f"{SERIALS} opens of inode {ino} with the same flags")

    def get(self, fh: int) -> T:
        """The open `fh`; one this process never gave out is opened again from the handle."""
        value = self._open.get(fh)
        if value is None:
            value = self._open[fh] = self._reopen(decode(fh))
        return value

    def known(self, fh: int) -> T | None:
        """The open `fh` if this process has it (nothing is reopened)."""
        return self._open.get(fh)

    def pop(self, fh: int) -> T | None:
        return self._open.pop(fh, None)

    def values(self) -> list[T]:
        return list(self._open.values())

    def clear(self) -> None:
        self._open.clear()
