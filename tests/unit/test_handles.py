"""Live-mount file handles say what they open (`live.handles`): a successor reopens from them."""

from __future__ import annotations

import os
import random

import pytest

from shadowfs.live import handles


def test_round_trip_of_inode_and_flags() -> None:
    rng = random.Random(5)
    modes = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]
    for _ in range(2000):
        ino = rng.randrange(1, 1 << handles.INO_BITS)
        flags = rng.choice(modes) | rng.choice([0, os.O_SYNC, os.O_DSYNC]) | rng.choice([0, os.O_NOATIME])
        fh = handles.encode(ino, flags | os.O_APPEND | os.O_TRUNC | os.O_CREAT, rng.randrange(1 << 30))
        assert fh > 0
        decoded = handles.decode(fh)
        assert decoded.ino == ino and not decoded.directory
        assert decoded.flags == flags, (flags, decoded.flags)


def test_directories_and_serials() -> None:
    fh = handles.encode(12, handles.DIRECTORY, 7)
    assert handles.decode(fh).directory and handles.decode(fh).ino == 12
    assert handles.decode(fh).flags & os.O_DIRECTORY
    # a serial tells apart concurrent opens of one inode with the same flags
    assert len({handles.encode(12, os.O_RDONLY, serial) for serial in range(handles.SERIALS)}) \
        == handles.SERIALS


def test_inode_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        handles.encode(1 << handles.INO_BITS, os.O_RDONLY, 1)
