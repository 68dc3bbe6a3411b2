"""Which filesystem a backing tree is on, and how to name its objects by inode number alone.

One job: turn a backing inode number into a file handle that the backing
filesystem accepts (open_by_handle_at), for the three filesystems shadowfs
protects, and say clearly why any other is refused.

- ext4 (also ext2/ext3): FILEID_INO32_GEN with generation 0; ext4 checks the
  generation only when it is not 0, so no lookup is needed (the fast path).
- XFS: FILEID_INO32_GEN, or 0x81 (a 64-bit inode number and the generation)
  when the filesystem hands those out; XFS checks the generation.
- btrfs: FILEID_BTRFS_WITHOUT_PARENT (objectid, subvolume root id, generation);
  btrfs checks the generation. Inode numbers restart in every subvolume, so a
  `Filesystem` is one subvolume (one st_dev) and carries its root id.

Invariants:
- A generation comes from a bounded per-filesystem cache, filled wherever an
  object is opened (by name: `Filesystem.remember`; by number: on success),
  else from the filesystem itself: XFS_IOC_BULKSTAT of the one inode (bs_gen),
  or BTRFS_IOC_TREE_SEARCH for the inode's INODE_ITEM in its subvolume tree
  (whose generation is i_generation). Both need CAP_SYS_ADMIN (root, as
  open_by_handle_at itself needs CAP_DAC_READ_SEARCH).
- An inode number names whatever object has it now, as on ext4: a cached
  generation that fails (the number was reused) is looked up again once.
- `Filesystem`s are kept by st_dev for the life of the process; the cache is
  safe to use from several threads.
- Nothing here imports pyfuse3 or trio.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import struct
import threading
from collections import OrderedDict

_libc = ctypes.CDLL(None, use_errno=True)

FILEID_INO32_GEN = 1
FILEID_INO32_GEN_PARENT = 2  # <linux/exportfs.h>: the same, followed by the parent's inode and generation
XFS_FILEID_INO64_GEN = 0x81  # fs/xfs/xfs_export.h: FILEID_INO32_GEN | XFS_FILEID_TYPE_64FLAG
XFS_FILEID_INO64_GEN_PARENT = 0x82
FILEID_BTRFS_WITHOUT_PARENT = 0x4D
FILEID_BTRFS_WITH_PARENT = 0x4E
FILEID_BTRFS_WITH_PARENT_ROOT = 0x4F
MAX_HANDLE_SZ = 128
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
GENERATION_CACHE = 1 << 15  # entries per filesystem (more than the live mount's 4096 descriptors)

EXT4_SUPER_MAGIC = 0xEF53
XFS_SUPER_MAGIC = 0x58465342
BTRFS_SUPER_MAGIC = 0x9123683E
_KNOWN_MAGICS = {0x01021994: "tmpfs", 0x794C7630: "overlay", 0x6969: "nfs", 0x65735546: "fuse",
                 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs", 0x4D44: "vfat", 0x5346544E: "ntfs",
                 0x7366746E: "ntfs3", 0xFF534D42: "cifs", 0x73717368: "squashfs", 0x9FA0: "proc",
                 0x62656572: "sysfs", 0x858458F6: "ramfs"}

_XFS_IOC_BULKSTAT = 0x8040587F  # _IOR('X', 127, struct xfs_bulk_ireq): a 64-byte header
_XFS_BULK_IREQ = struct.Struct("=QIII I 5Q")  # ino, flags, icount, ocount, agno, reserved
_XFS_BULKSTAT_SIZE = 192  # struct xfs_bulkstat
_XFS_BS_INO, _XFS_BS_GEN = 0, 64  # offsets of bs_ino (u64) and bs_gen (u32)

_BTRFS_IOC_TREE_SEARCH = 0xD0009411  # _IOWR(0x94, 17, struct btrfs_ioctl_search_args): 4096 bytes
_BTRFS_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # tree_id, min/max objectid, offset, transid; types, nr
_BTRFS_SEARCH_HEADER = struct.Struct("=3Q2I")  # transid, objectid, offset, type, len
_BTRFS_SEARCH_ARGS_SIZE = 4096
_BTRFS_INODE_ITEM_KEY = 1
_BTRFS_ROOT_REF_KEY = 156
_BTRFS_ROOT_TREE_OBJECTID = 1
_U64_MAX = 2**64 - 1


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


class FsKind(enum.Enum):
    EXT4 = "ext4"
    XFS = "xfs"
    BTRFS = "btrfs"


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def name_to_handle(fd: int, path: bytes = b"") -> tuple[int, bytes]:
    """(handle type, handle bytes) of `path` under `fd` (b"": the object behind `fd`, O_PATH allowed)."""
    handle = _FileHandle()
    handle.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(fd, path, ctypes.byref(handle), ctypes.byref(mount_id),
                               AT_EMPTY_PATH if not path else 0) != 0:
        raise _oserror("name_to_handle_at")
    kind: int = handle.handle_type  # a c_int field (ctypes leaves it untyped)
    return kind, bytes(handle.f_handle[:handle.handle_bytes])


def fs_magic(fd: int) -> int:
    """The f_type fstatfs reports for the filesystem of `fd`."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type (a long) comes first
    if _libc.fstatfs(fd, buf) != 0:
        raise _oserror("fstatfs")
    magic: int = ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF
    return magic


def fs_name(fd: int) -> str:
    """A name for the filesystem of `fd` for messages: its type in /proc/self/mountinfo, else its magic."""
    magic = fs_magic(fd)
    known = {EXT4_SUPER_MAGIC: "ext4", XFS_SUPER_MAGIC: "xfs", BTRFS_SUPER_MAGIC: "btrfs", **_KNOWN_MAGICS}
    if magic in known:
        return known[magic]
    dev = os.fstat(fd).st_dev
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if fields[2] == f"{os.major(dev)}:{os.minor(dev)}".encode():
                    return fields[fields.index(b"-") + 1].decode(errors="replace")
    except (OSError, ValueError, IndexError):
        pass
    return f"a filesystem of type {magic:#x}"


class Filesystem:
    """One backing filesystem (for btrfs: one subvolume) and how to name its objects by inode number."""

    def __init__(self, kind: FsKind, dev: int, handle_type: int, root_id: int = 0) -> None:
        self.kind = kind
        self.dev = dev
        self.handle_type = handle_type  # what open_by_ino builds
        self.root_id = root_id  # btrfs: the subvolume's root objectid
        self.needs_generation = kind is not FsKind.EXT4
        self._generations: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, ino: int, generation: int) -> bytes:
        """The handle bytes of (ino, generation) in this filesystem's handle type."""
        if self.kind is FsKind.BTRFS:
            return struct.pack("=QQI", ino, self.root_id, generation & 0xFFFFFFFF)
        if self.handle_type == XFS_FILEID_INO64_GEN:
            return struct.pack("=QI", ino, generation)
        return struct.pack("=II", ino, generation)

    # ---- generations -------------------------------------------------------------------------------

    def cached(self, ino: int) -> int | None:
        with self._lock:
            gen = self._generations.get(ino)
            if gen is not None:
                self._generations.move_to_end(ino)
            return gen

    def store(self, ino: int, generation: int) -> None:
        if not self.needs_generation:
            return
        with self._lock:
            self._generations[ino] = generation
            self._generations.move_to_end(ino)
            if len(self._generations) > GENERATION_CACHE:
                self._generations.popitem(last=False)

    def forget(self, ino: int) -> None:
        with self._lock:
            self._generations.pop(ino, None)

    def remember(self, fd: int) -> None:
        """Cache the generation of the object behind `fd` (any descriptor, O_PATH too); no-op on ext4."""
        if not self.needs_generation:
            return
        try:
            kind, data = name_to_handle(fd)
        except OSError:
            return  # a hint only: the lookup by number still works
        found = generation_in_handle(kind, data)
        if found is not None:
            self.store(found[0], found[1])

    def lookup(self, fd: int, ino: int) -> int:
        """The generation of inode `ino`, from the filesystem (fd: any descriptor on it).

        Raises OSError(ESTALE) when no object has that number.
        """
        gen = _xfs_generation(fd, ino) if self.kind is FsKind.XFS else _btrfs_generation(fd, ino)
        self.store(ino, gen)
        return gen


def generation_in_handle(kind: int, data: bytes) -> tuple[int, int] | None:
    """(inode number, generation) a handle of ext4, XFS or btrfs carries, else None."""
    if kind in (FILEID_INO32_GEN, FILEID_INO32_GEN_PARENT) and len(data) >= 8:
        ino32, gen32 = struct.unpack_from("=II", data)
        return ino32, gen32
    if kind in (XFS_FILEID_INO64_GEN, XFS_FILEID_INO64_GEN_PARENT) and len(data) >= 12:
        ino64, gen = struct.unpack_from("=QI", data)
        return ino64, gen
    if kind in (FILEID_BTRFS_WITHOUT_PARENT, FILEID_BTRFS_WITH_PARENT,
                FILEID_BTRFS_WITH_PARENT_ROOT) and len(data) >= 20:
        objectid, _root, gen = struct.unpack_from("=QQI", data)
        return objectid, gen
    return None


def btrfs_root_in_handle(kind: int, data: bytes) -> int | None:
    """The subvolume root id a btrfs handle names, else None."""
    if kind in (FILEID_BTRFS_WITHOUT_PARENT, FILEID_BTRFS_WITH_PARENT,
                FILEID_BTRFS_WITH_PARENT_ROOT) and len(data) >= 16:
        root: int = struct.unpack_from("=Q", data, 8)[0]
        return root
    return None


def _xfs_generation(fd: int, ino: int) -> int:
    buf = ctypes.create_string_buffer(_XFS_BULK_IREQ.size + _XFS_BULKSTAT_SIZE)
    _XFS_BULK_IREQ.pack_into(buf, 0, ino, 0, 1, 0, 0, 0, 0, 0, 0, 0)
    if _libc.ioctl(fd, ctypes.c_ulong(_XFS_IOC_BULKSTAT), buf) != 0:
        raise _oserror(f"XFS_IOC_BULKSTAT(inode {ino})")
    ocount = struct.unpack_from("=I", buf, 16)[0]
    found, gen = (struct.unpack_from("=Q", buf, _XFS_BULK_IREQ.size + _XFS_BS_INO)[0],
                  struct.unpack_from("=I", buf, _XFS_BULK_IREQ.size + _XFS_BS_GEN)[0])
    if ocount != 1 or found != ino:  # bulkstat returns the next inode in use at or after `ino`
        raise OSError(errno.ESTALE, f"XFS inode {ino} is not in use")
    result: int = gen
    return result


def _btrfs_search(fd: int, tree_id: int, objectid: int, item_type: int,
                  nr_items: int) -> list[tuple[int, int, bytes]]:
    """(objectid, offset, item bytes) of the items (objectid, item_type, *) in tree `tree_id` (0: fd's)."""
    buf = ctypes.create_string_buffer(_BTRFS_SEARCH_ARGS_SIZE)
    _BTRFS_SEARCH_KEY.pack_into(buf, 0, tree_id, objectid, objectid, 0, _U64_MAX, 0, _U64_MAX,
                                item_type, item_type, nr_items, 0, 0, 0, 0, 0)
    if _libc.ioctl(fd, ctypes.c_ulong(_BTRFS_IOC_TREE_SEARCH), buf) != 0:
        raise _oserror(f"BTRFS_IOC_TREE_SEARCH(objectid {objectid})")
    count = struct.unpack_from("=I", buf, 7 * 8 + 8)[0]  # nr_items, updated to what was found
    items = []
    pos = _BTRFS_SEARCH_KEY.size
    for _ in range(count):
        _transid, obj, offset, kind, length = _BTRFS_SEARCH_HEADER.unpack_from(buf, pos)
        pos += _BTRFS_SEARCH_HEADER.size
        if kind == item_type and obj == objectid:
            items.append((obj, offset, buf.raw[pos:pos + length]))
        pos += length
    return items


def _btrfs_generation(fd: int, ino: int) -> int:
    items = _btrfs_search(fd, 0, ino, _BTRFS_INODE_ITEM_KEY, 1)
    if not items or len(items[0][2]) < 8:
        raise OSError(errno.ESTALE, f"btrfs inode {ino} is not in use")
    gen: int = struct.unpack_from("=Q", items[0][2])[0]  # btrfs_inode_item.generation = i_generation
    return gen & 0xFFFFFFFF


def btrfs_child_subvolumes(fd: int, root_id: int) -> list[tuple[int, bytes]]:
    """(directory inode, name) of every subvolume directly inside subvolume `root_id` (ROOT_REF items)."""
    result = []
    for _obj, _child, item in _btrfs_search(fd, _BTRFS_ROOT_TREE_OBJECTID, root_id,
                                            _BTRFS_ROOT_REF_KEY, 4096):
        dirid, _sequence, name_len = struct.unpack_from("=QQH", item)
        result.append((dirid, item[18:18 + name_len]))
    return result


# ---- filesystems by st_dev ----------------------------------------------------------------------------

_filesystems: dict[int, Filesystem] = {}
_filesystems_lock = threading.Lock()


def filesystem_of(fd: int, *, fresh: bool = False) -> Filesystem:
    """The `Filesystem` of descriptor `fd` (detected once per st_dev; again with `fresh`, which
    replaces what was known of that st_dev: a device number can be reused by another
    filesystem, for example a loop device set up again, and `volume add` must see what is
    there now).

    Raises ValueError naming the filesystem when it is not ext4, XFS or btrfs.
    """
    dev = os.fstat(fd).st_dev
    fs = None if fresh else _filesystems.get(dev)
    if fs is not None:
        return fs
    fs = _detect(fd, dev)
    with _filesystems_lock:
        known = _filesystems.get(dev)
        if fresh or known is None:
            if known is None or (known.kind, known.handle_type, known.root_id) != (
                    fs.kind, fs.handle_type, fs.root_id):
                _filesystems[dev] = fs
        return _filesystems[dev]


def redetect(fd: int, known: Filesystem) -> Filesystem:
    """The `Filesystem` of `fd` detected again after a failure: `known` when it is still right, else
    the new one, which replaces it (a device number can be reused by another filesystem)."""
    try:
        fresh = _detect(fd, known.dev)
    except (OSError, ValueError):
        return known
    if (fresh.kind, fresh.handle_type, fresh.root_id) == (known.kind, known.handle_type, known.root_id):
        return known
    with _filesystems_lock:
        _filesystems[known.dev] = fresh
    return fresh


def _detect(fd: int, dev: int) -> Filesystem:
    magic = fs_magic(fd)
    if magic not in (EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, BTRFS_SUPER_MAGIC):
        raise ValueError(f"is on {fs_name(fd)}; shadowfs protects trees on ext4, XFS and btrfs")
    try:
        handle_type, data = name_to_handle(fd)
    except OSError as exc:
        raise ValueError(f"filesystem does not hand out file handles ({exc.strerror})") from exc
    if magic == EXT4_SUPER_MAGIC:
        if handle_type != FILEID_INO32_GEN:
            raise ValueError(f"ext4 hands out file handles of type {handle_type:#x}, not inode-number ones")
        return Filesystem(FsKind.EXT4, dev, FILEID_INO32_GEN)
    if magic == XFS_SUPER_MAGIC:
        if handle_type not in (FILEID_INO32_GEN, XFS_FILEID_INO64_GEN):
            raise ValueError(f"XFS hands out file handles of type {handle_type:#x}, not inode-number ones")
        return Filesystem(FsKind.XFS, dev, handle_type)
    root = btrfs_root_in_handle(handle_type, data)
    if root is None:
        raise ValueError(f"btrfs hands out file handles of type {handle_type:#x}, not objectid ones")
    return Filesystem(FsKind.BTRFS, dev, FILEID_BTRFS_WITHOUT_PARENT, root)


__all__ = ["AT_EMPTY_PATH", "FILEID_BTRFS_WITHOUT_PARENT", "FILEID_INO32_GEN", "FILEID_INO32_GEN_PARENT",
           "Filesystem", "FsKind", "MAX_HANDLE_SZ", "XFS_FILEID_INO64_GEN", "btrfs_child_subvolumes",
           "btrfs_root_in_handle", "filesystem_of", "fs_name", "generation_in_handle", "name_to_handle",
           "redetect"]
