"""Parsing fanotify event buffers (`linux.fanotify.parse`), built by hand as <linux/fanotify.h> lays them out.

The real kernel's events are checked in tests/core/test_fanotify.py; here only the byte layout:
metadata, FID / DFID / DFID_NAME records, several events in one buffer, and every way a buffer
can be malformed.
"""

from __future__ import annotations

import struct

import pytest

from shadowfs.linux import fanotify as fan
from shadowfs.linux.fanotify import Event, Handle

FSID = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def record(info_type: int, handle: Handle, name: bytes | None = None) -> bytes:
    """One info record: header, fsid, struct file_handle, the name NUL-terminated, padded to 4."""
    body = FSID + struct.pack("=Ii", len(handle.data), handle.type) + handle.data
    if name is not None:
        body += name + b"\0"
    length = 4 + len(body)
    padding = -length % 4
    return struct.pack("=BBH", info_type, 0, length + padding) + body + b"\0" * padding


def event(mask: int, pid: int, *records: bytes, fd: int = fan.FAN_NOFD, version: int = 3) -> bytes:
    infos = b"".join(records)
    return struct.pack("=IBBHQii", 24 + len(infos), version, 0, 24, mask, fd, pid) + infos


def ext4(ino: int, gen: int = 7) -> Handle:
    return Handle(1, struct.pack("=II", ino, gen))


def test_an_entry_event_with_its_directory_name_and_child() -> None:
    buf = event(fan.FAN_CREATE, 4242, record(fan.FAN_EVENT_INFO_TYPE_DFID_NAME, ext4(12), b"new file"),
                record(fan.FAN_EVENT_INFO_TYPE_FID, ext4(99)))
    assert fan.parse(buf) == [Event(fan.FAN_CREATE, 4242, -1, ext4(12), b"new file", ext4(99))]


def test_an_event_on_a_directory_itself_and_one_with_only_the_object() -> None:
    buf = (event(fan.FAN_ATTRIB | fan.FAN_ONDIR, 1, record(fan.FAN_EVENT_INFO_TYPE_DFID_NAME, ext4(5), b"."))
           + event(fan.FAN_DELETE_SELF, 2, record(fan.FAN_EVENT_INFO_TYPE_FID, ext4(6)))
           + event(fan.FAN_MODIFY, 3, record(fan.FAN_EVENT_INFO_TYPE_DFID, ext4(7)),
                   record(fan.FAN_EVENT_INFO_TYPE_FID, ext4(8))))
    assert fan.parse(buf) == [
        Event(fan.FAN_ATTRIB | fan.FAN_ONDIR, 1, -1, ext4(5), b".", None),
        Event(fan.FAN_DELETE_SELF, 2, -1, None, None, ext4(6)),
        Event(fan.FAN_MODIFY, 3, -1, ext4(7), None, ext4(8)),
    ]


def test_an_overflow_has_no_records_and_unknown_records_are_passed_over() -> None:
    unknown = struct.pack("=BBH", 99, 0, 12) + b"\xff" * 8
    buf = event(fan.FAN_Q_OVERFLOW, 0) + event(fan.FAN_MODIFY, 9, unknown,
                                               record(fan.FAN_EVENT_INFO_TYPE_FID, ext4(3)))
    assert fan.parse(buf) == [Event(fan.FAN_Q_OVERFLOW, 0, -1, None, None, None),
                              Event(fan.FAN_MODIFY, 9, -1, None, None, ext4(3))]
    assert fan.parse(b"") == []


def test_a_long_handle_and_a_name_that_is_not_utf8() -> None:
    odd = Handle(0x4D, bytes(range(40)))
    buf = event(fan.FAN_MOVED_TO, 5, record(fan.FAN_EVENT_INFO_TYPE_DFID_NAME, odd, b"\xff\xfe name"))
    assert fan.parse(buf) == [Event(fan.FAN_MOVED_TO, 5, -1, odd, b"\xff\xfe name", None)]


def test_the_inode_is_read_from_ext4_xfs_and_btrfs_handles() -> None:
    assert fan.inode_in_handle(ext4(123456)) == 123456
    assert fan.inode_in_handle(Handle(2, struct.pack("=IIII", 77, 1, 2, 3))) == 77  # FILEID_INO32_GEN_PARENT
    assert fan.inode_in_handle(Handle(0x81, struct.pack("=QI", 2**33 + 5, 9))) == 2**33 + 5  # XFS, 64-bit
    assert fan.inode_in_handle(Handle(0x82, struct.pack("=QIQI", 70, 1, 2, 3))) == 70
    btrfs = Handle(0x4D, struct.pack("=QQI", 300, 5, 8))  # objectid 300 in subvolume 5
    assert fan.inode_in_handle(btrfs, btrfs_root=5) == 300
    assert fan.inode_in_handle(btrfs, btrfs_root=256) is None  # another subvolume: opened instead
    assert fan.inode_in_handle(btrfs) is None
    assert fan.inode_in_handle(Handle(0x4D, struct.pack("=QQ", 5, 6))) is None  # too short
    assert fan.inode_in_handle(Handle(1, b"\x01\x02")) is None


@pytest.mark.parametrize("buf, message", [
    (event(fan.FAN_MODIFY, 1, version=2), "metadata version 2"),
    (event(fan.FAN_MODIFY, 1)[:20], "less than an event's metadata"),
    (struct.pack("=IBBHQii", 23, 3, 0, 24, 2, -1, 1), "event of 23 bytes"),
    (struct.pack("=IBBHQii", 64, 3, 0, 24, 2, -1, 1), "event of 64 bytes"),
    (event(fan.FAN_MODIFY, 1, struct.pack("=BBH", 1, 0, 200)), "info record of 200 bytes"),
    (event(fan.FAN_MODIFY, 1, struct.pack("=BBH", 1, 0, 2)), "info record of 2 bytes"),
    (event(fan.FAN_MODIFY, 1, b"\x01\x00"), "less than an info header"),
    (event(fan.FAN_MODIFY, 1, struct.pack("=BBH", 1, 0, 8) + b"\0" * 4), "shorter than its fsid"),
    (event(fan.FAN_MODIFY, 1, struct.pack("=BBH", 1, 0, 24) + FSID + struct.pack("=Ii", 64, 1) + b"\0" * 4),
     "handle of 64 bytes overruns"),
    (event(fan.FAN_CREATE, 1, record(fan.FAN_EVENT_INFO_TYPE_DFID_NAME, ext4(1), b"")), "without a name"),
])
def test_malformed_buffers_are_refused(buf: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fan.parse(buf)
