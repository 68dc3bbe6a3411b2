"""The on-disk format of a volume's diff area: the one place that defines keys.

A diff area is one LMDB environment with these named databases:

- ``meta``: ``b"format"`` -> u32 version, ``b"next_seq"`` -> u64 next snapshot
  sequence (never reused), ``b"volume"`` -> UTF-8 volume name, ``b"last_gmt"``
  -> u64, the highest previous-version second given so far (never lowered).
- ``snapshots``: u64 seq -> JSON ``{"snapshot_id", "set_id", "created"}``, plus
  ``"held"`` (the UTC time of `snapshot hold`) while the snapshot is held: a
  held snapshot is deleted only when asked with force, never by the diff
  area's limit; and ``"gmt"``, the UTC second of the snapshot's
  previous-version name (Samba's ``@GMT-...``; design §5.6): its creation
  second, or one past the last one given if that is not later, so no two
  snapshots of a volume ever get one name, even after deletions. Readers
  ignore keys they do not know, so neither needs a new format version.
- ``preimages``: object key + u64 seq -> encoded value. Object keys:
  ``b"A" + u64 ino`` (attributes and xattrs), ``b"B" + u64 ino + u64 block``
  (a data block of BLOCK_SIZE bytes), ``b"D" + u64 dir ino + name + b"\\0"``
  (a directory entry; names never contain NUL, so the terminator keeps every
  name's keys contiguous and ordered). All integers are big-endian, so
  ``set_range(object + seq)`` finds the smallest sequence >= seq.
- ``bysnap``: u64 seq + object key -> b"": which objects have a pre-image under
  each sequence, so deleting a snapshot costs what it captured.
- ``usage``: u64 seq -> u64 bytes stored under that sequence (keys + values).
- ``graveyard``: u64 ino -> u64 death seq (newest snapshot when the object lost
  its last name); the object lives in ``<backing>/.shadowfs/graveyard/<ino>``.
- ``freed``: u64 offset + u32 length -> b"": extents of ``blocks.dat`` whose
  last reference a committed transaction dropped, to be punched out.
- ``damage``: u64 ino -> JSON ``{"seq", "path", "cause", "found"}``: an object
  that changed while protection had lapsed (design §9.3). It is damaged in
  every snapshot with a sequence ``<= seq`` (the newest snapshot when it was
  marked), and reading it there fails with EIO; ``path`` is its path relative
  to the volume root as found (or null), ``cause`` a short text, ``found`` a
  UTC time.
- ``authors``: the key of an attribute or directory-entry pre-image (object key
  + u64 seq) -> who made the change that pre-image protects (`AuthorRecord`,
  design §3.14): written in the transaction that stores the pre-image, deleted
  with it. Data-block pre-images have none (the file's attributes are always
  captured first, by the same change).

Data-block pre-images hold their bytes in ``blocks.dat`` (see blockstore.py);
the LMDB value is then a reference (offset, length). An all-zero block is
stored as its length alone.

The kinds of object (`KINDS`, `KIND_OF_FMT`) name the file types an
attribute record's mode may carry (its S_IFMT bits); every layer above (the
snapshot readers, the backup trees, the media records) uses these names.

The two numbers every key is made of have types of their own, so that a type
checker catches one passed where the other (or a FUSE inode, or a browser node
id) is meant: `BackingIno`, an inode number of the backing filesystem (the
identity of an object, design §3.8), and `Seq`, a snapshot's sequence number in
this diff area (design §3). Both are plain ints at run time (`typing.NewType`).
A number read from a key is typed where it is unpacked (`read_seq`, `read_ino`,
`object_ino`); one from the kernel or the wire is converted once where it
enters shadowfs.

Version history: 1 — first format; 2 — block bytes in blocks.dat, ``freed``;
3 — ``damage``; 4 — ``authors``. An area of an older format in
`UPGRADABLE_VERSIONS` is upgraded in place when it is opened writable (the
missing empty databases are created and the version written, in one
transaction). A read-only opener reads a format in `READABLE_VERSIONS` as it
is (format 3: no author is known of any change) and refuses format 2 until
its mount process has upgraded it.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NewType

BackingIno = NewType("BackingIno", int)
"""An inode number of the backing filesystem: the identity of an object in every key (design §3.8)."""

Seq = NewType("Seq", int)
"""A snapshot's sequence number in its volume's diff area: grows, never reused (design §3)."""

FORMAT_VERSION = 4
UPGRADABLE_VERSIONS = (2, 3)  # opened writable, upgraded in place to FORMAT_VERSION
READABLE_VERSIONS = (3,)  # older formats a read-only opener reads as they are (see `databases`)
BLOCK_SIZE = 64 * 1024
SEQ_BYTES = 8
HIDDEN_DIR = b".shadowfs"
GRAVEYARD = b"graveyard"

DB_META = b"meta"
DB_SNAPSHOTS = b"snapshots"
DB_PREIMAGES = b"preimages"
DB_BYSNAP = b"bysnap"
DB_USAGE = b"usage"
DB_GRAVEYARD = b"graveyard"
DB_FREED = b"freed"
DB_DAMAGE = b"damage"
DB_AUTHORS = b"authors"
ALL_DBS = (DB_META, DB_SNAPSHOTS, DB_PREIMAGES, DB_BYSNAP, DB_USAGE, DB_GRAVEYARD, DB_FREED, DB_DAMAGE,
           DB_AUTHORS)
_SINCE_VERSION = {DB_DAMAGE: 3, DB_AUTHORS: 4}  # the databases a format added


def databases(version: int) -> tuple[bytes, ...]:
    """The named databases an area of format `version` has."""
    return tuple(name for name in ALL_DBS if _SINCE_VERSION.get(name, 1) <= version)


META_FORMAT = b"format"
META_NEXT_SEQ = b"next_seq"
META_VOLUME = b"volume"
META_LAST_GMT = b"last_gmt"
# b"volume": blocks.dat is <backing>/.shadowfs/blocks.dat; absent: beside the environment
META_BLOCKS = b"blocks"
BLOCKS_ON_VOLUME = b"volume"

# kind name -> S_IFMT bits, and back: the seven file types an object can have
KINDS: dict[str, int] = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
                         "fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK,
                         "sock": stat.S_IFSOCK}
KIND_OF_FMT: dict[int, str] = {fmt: kind for kind, fmt in KINDS.items()}


# ---- block geometry ----------------------------------------------------------------------------


def block_span(offset: int, length: int) -> range:
    """The block numbers that bytes [offset, offset+length) touch."""
    if length <= 0:
        return range(0)
    return range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1)


def blocks_below(size: int) -> int:
    """How many blocks hold data for a file of `size` bytes."""
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


def blocks_to_ranges(blocks: Iterable[int], size: int) -> list[tuple[int, int]]:
    """Merge block numbers into (offset, length) byte ranges cut at `size`: block ``b`` of a file
    covers bytes ``[b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE)``, the last one only up to the file's size."""
    ranges: list[tuple[int, int]] = []
    for block in sorted(blocks):
        start = block * BLOCK_SIZE
        end = min(start + BLOCK_SIZE, size)
        if start >= end:
            continue
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
        else:
            ranges.append((start, end - start))
    return ranges


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# struct's unpackers return untyped tuples; these say, once, what a field of each layout is.
# Calling them costs no more than the Struct methods they are (no conversion on cursor loops).
_unpack_u32: Callable[[bytes], tuple[int]] = _U32.unpack
_unpack_u64: Callable[[bytes, int], tuple[int]] = _U64.unpack_from
_unpack_seq: Callable[[bytes, int], tuple[Seq]] = _U64.unpack_from
_unpack_ino: Callable[[bytes, int], tuple[BackingIno]] = _U64.unpack_from


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u64(data: bytes, offset: int = 0) -> int:
    return _unpack_u64(data, offset)[0]


def read_seq(data: bytes, offset: int = 0) -> Seq:
    """A sequence number stored as u64 (a ``snapshots``, ``usage`` or ``bysnap`` key, a key's tail)."""
    return _unpack_seq(data, offset)[0]


def read_ino(data: bytes, offset: int = 0) -> BackingIno:
    """A backing inode number stored as u64 (a ``graveyard`` key, inside an object key)."""
    return _unpack_ino(data, offset)[0]


def u32(value: int) -> bytes:
    return _U32.pack(value)


def read_u32(data: bytes) -> int:
    return _unpack_u32(data)[0]


# ---- object keys -----------------------------------------------------------

def attr_object(ino: BackingIno) -> bytes:
    return b"A" + u64(ino)


def block_object(ino: BackingIno, block: int) -> bytes:
    return b"B" + u64(ino) + u64(block)


def blocks_prefix(ino: BackingIno) -> bytes:
    return b"B" + u64(ino)


def dirent_object(dir_ino: BackingIno, name: bytes) -> bytes:
    if b"\0" in name or b"/" in name or not name:
        raise ValueError(f"invalid directory entry name {name!r}")
    return b"D" + u64(dir_ino) + name + b"\0"


def dirents_prefix(dir_ino: BackingIno) -> bytes:
    return b"D" + u64(dir_ino)


def object_ino(obj: bytes) -> BackingIno:
    """The inode of any object key: the object's for ``A`` and ``B``, the directory's for ``D``."""
    return read_ino(obj, 1)


def dirent_name(obj: bytes) -> bytes:
    """The entry name inside a dirent object key."""
    return obj[9:-1]


def block_number(obj: bytes) -> int:
    return read_u64(obj, 9)


def preimage_key(obj: bytes, seq: Seq) -> bytes:
    return obj + u64(seq)


def split_preimage_key(key: bytes) -> tuple[bytes, Seq]:
    return key[:-SEQ_BYTES], read_seq(key, len(key) - SEQ_BYTES)


def bysnap_key(seq: Seq, obj: bytes) -> bytes:
    return u64(seq) + obj


def split_bysnap_key(key: bytes) -> tuple[Seq, bytes]:
    return read_seq(key), key[SEQ_BYTES:]


# ---- values ----------------------------------------------------------------

_ATTR_HEAD = struct.Struct(">BIIIIQQQqqqq")
_ATTR_EXISTS = 0
_ATTR_NONEXISTENT = 1


@dataclass(frozen=True)
class AttrRecord:
    """An object's attributes at one instant; `exists=False` means not born yet."""

    exists: bool = True
    mode: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 0
    rdev: int = 0
    size: int = 0
    blocks: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    birth_ns: int = 0
    symlink_target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


NONEXISTENT = AttrRecord(exists=False)


def attr_from_stat(st: os.stat_result, symlink_target: bytes = b"",
                   xattrs: dict[bytes, bytes] | None = None) -> AttrRecord:
    """The record of an object that exists, from its stat (and its target and xattrs)."""
    return AttrRecord(
        exists=True, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, nlink=st.st_nlink,
        rdev=st.st_rdev, size=st.st_size, blocks=st.st_blocks, atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, birth_ns=0,
        symlink_target=symlink_target, xattrs=xattrs or {},
    )


def encode_attr(record: AttrRecord) -> bytes:
    if not record.exists:
        return bytes([_ATTR_NONEXISTENT])
    parts = [
        _ATTR_HEAD.pack(_ATTR_EXISTS, record.mode, record.uid, record.gid, record.nlink,
                        record.rdev, record.size, record.blocks, record.atime_ns,
                        record.mtime_ns, record.ctime_ns, record.birth_ns),
        u32(len(record.symlink_target)), record.symlink_target, u32(len(record.xattrs)),
    ]
    for name, value in sorted(record.xattrs.items()):
        parts += [u32(len(name)), name, u32(len(value)), value]
    return b"".join(parts)


def decode_attr(data: bytes) -> AttrRecord:
    if data[0] == _ATTR_NONEXISTENT:
        return NONEXISTENT
    (_, mode, uid, gid, nlink, rdev, size, blocks, atime_ns, mtime_ns, ctime_ns,
     birth_ns) = _ATTR_HEAD.unpack_from(data)
    pos = _ATTR_HEAD.size
    view = memoryview(data)

    def take() -> bytes:
        nonlocal pos
        length = _U32.unpack_from(data, pos)[0]
        pos += 4
        chunk = bytes(view[pos:pos + length])
        pos += length
        return chunk

    target = take()
    count = _U32.unpack_from(data, pos)[0]
    pos += 4
    xattrs = {}
    for _ in range(count):
        name = take()
        xattrs[name] = take()
    return AttrRecord(True, mode, uid, gid, nlink, rdev, size, blocks, atime_ns, mtime_ns,
                      ctime_ns, birth_ns, target, xattrs)


_DIRENT = struct.Struct(">BQB")
_DIRENT_PRESENT = 0
_DIRENT_ABSENT = 1


@dataclass(frozen=True)
class DirentRecord:
    """One directory entry at one instant: the inode and its file type, or absent."""

    ino: BackingIno = BackingIno(0)
    kind: int = 0  # the S_IFMT bits of the target, >> 12
    present: bool = True


ABSENT = DirentRecord(present=False)


def encode_dirent(record: DirentRecord) -> bytes:
    return _DIRENT.pack(_DIRENT_PRESENT if record.present else _DIRENT_ABSENT,
                        record.ino, record.kind)


def decode_dirent(data: bytes) -> DirentRecord:
    flag, ino, kind = _DIRENT.unpack(data)
    return ABSENT if flag == _DIRENT_ABSENT else DirentRecord(ino, kind)


_BLOCK_ZERO = 1
_BLOCK_EXTERNAL = 2
_EXTENT = struct.Struct(">QI")


@dataclass(frozen=True)
class BlockRef:
    """Where a captured block's bytes are: an extent of blocks.dat, or zeros (offset None)."""

    offset: int | None
    length: int


def is_zero(data: bytes) -> bool:
    return data.count(0) == len(data)


def encode_block_ref(ref: BlockRef) -> bytes:
    if ref.offset is None:
        return bytes([_BLOCK_ZERO]) + u32(ref.length)
    return bytes([_BLOCK_EXTERNAL]) + _EXTENT.pack(ref.offset, ref.length)


def decode_block_ref(data: bytes) -> BlockRef:
    if data[0] == _BLOCK_ZERO:
        return BlockRef(None, read_u32(data[1:5]))
    if data[0] != _BLOCK_EXTERNAL:
        raise ValueError(f"unknown block value kind {data[0]}")
    offset, length = _EXTENT.unpack_from(data, 1)
    return BlockRef(offset, length)


def extent_key(offset: int, length: int) -> bytes:
    return _EXTENT.pack(offset, length)


def split_extent_key(key: bytes) -> tuple[int, int]:
    offset, length = _EXTENT.unpack(key)
    return offset, length


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot of this volume as recorded in the diff area."""

    seq: Seq
    snapshot_id: str
    set_id: str
    created: str
    held: str | None = None  # since when it is held (UTC), None: not held
    gmt: int | None = None  # the UTC second of its previous-version name; None: made before there were any


def encode_snapshot(record: SnapshotRecord) -> bytes:
    fields: dict[str, str | int] = {"snapshot_id": record.snapshot_id, "set_id": record.set_id,
                                    "created": record.created}
    if record.held is not None:
        fields["held"] = record.held
    if record.gmt is not None:
        fields["gmt"] = record.gmt
    return json.dumps(fields).encode()


def decode_snapshot(seq: Seq, data: bytes) -> SnapshotRecord:
    fields = json.loads(data)
    held = fields.get("held")
    gmt = fields.get("gmt")
    return SnapshotRecord(seq, fields["snapshot_id"], fields["set_id"], fields["created"],
                          held if isinstance(held, str) else None,
                          gmt if isinstance(gmt, int) and not isinstance(gmt, bool) else None)


def created_second(created: str) -> int:
    """The UTC second of a snapshot's `created` stamp (ISO 8601; naive means UTC), 0 if unreadable."""
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int(when.timestamp()))


def previous_version_seconds(records: Iterable[SnapshotRecord]) -> dict[Seq, int]:
    """The previous-version second of each of one volume's snapshots, by seq.

    A record carries the second it was given (`DiffArea.record_snapshot`); one made before
    records carried it gets, in sequence order, its creation second or one past the one
    before it, whichever is later (stable while no older such record is deleted).
    """
    seconds: dict[Seq, int] = {}
    last = -1
    for record in sorted(records, key=lambda r: r.seq):
        second = record.gmt if record.gmt is not None else max(created_second(record.created), last + 1)
        seconds[record.seq] = second
        last = max(last, second)
    return seconds


PREVIOUS_VERSION_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"  # Samba's shadow:format default, Windows' token


def previous_version_name(second: int) -> str:
    """The previous-version name (``@GMT-YYYY.MM.DD-HH.MM.SS``) of UTC second `second`."""
    return time.strftime(PREVIOUS_VERSION_FORMAT, time.gmtime(second))


def previous_version_names(records: Iterable[SnapshotRecord]) -> dict[Seq, str]:
    """The previous-version name of each of one volume's snapshots, by seq."""
    return {seq: previous_version_name(second) for seq, second in previous_version_seconds(records).items()}


@dataclass(frozen=True)
class DamageRecord:
    """An object that changed while protection had lapsed: damaged in every snapshot with a
    sequence <= `seq` (design §9.3)."""

    ino: BackingIno
    seq: Seq
    path: str | None  # relative to the volume root, as found; None if unknown
    cause: str
    found: str  # UTC time


def encode_damage(record: DamageRecord) -> bytes:
    return json.dumps({"seq": record.seq, "path": record.path, "cause": record.cause,
                       "found": record.found}).encode()


def decode_damage(ino: BackingIno, data: bytes) -> DamageRecord:
    fields = json.loads(data)
    return DamageRecord(ino, Seq(int(fields["seq"])), fields.get("path"), fields.get("cause", ""),
                        fields.get("found", ""))


_AUTHOR_HEAD = struct.Struct(">BIIIq")  # layout, uid, gid, pid, time (ns since the epoch)
_AUTHOR_LAYOUT = 1


@dataclass(frozen=True)
class AuthorRecord:
    """Who made the change a pre-image protects, as the live mount saw it (design §3.14): the
    caller's ids from the FUSE request, its command name, the wall-clock time of the capture,
    and the request (``write``, ``truncate``, ``setattr``, ``create``, ``unlink``, ``rename``...)."""

    uid: int
    gid: int
    pid: int  # as the kernel reported it (a thread's id); it may have been reused since
    time_ns: int
    comm: bytes  # /proc/<pid>/comm then (at most 15 bytes); b"" when it could not be read
    op: str


def encode_author(record: AuthorRecord) -> bytes:
    comm = record.comm[:255]
    op = record.op.encode()[:255]
    return b"".join((_AUTHOR_HEAD.pack(_AUTHOR_LAYOUT, record.uid, record.gid, record.pid, record.time_ns),
                     bytes([len(comm)]), comm, bytes([len(op)]), op))


def decode_author(data: bytes) -> AuthorRecord:
    layout, uid, gid, pid, time_ns = _AUTHOR_HEAD.unpack_from(data)
    if layout != _AUTHOR_LAYOUT:
        raise ValueError(f"unknown author record layout {layout}")
    pos = _AUTHOR_HEAD.size
    comm = bytes(data[pos + 1:pos + 1 + data[pos]])
    pos += 1 + data[pos]
    op = bytes(data[pos + 1:pos + 1 + data[pos]]).decode(errors="replace")
    return AuthorRecord(uid, gid, pid, time_ns, comm, op)
