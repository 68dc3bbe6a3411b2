"""One volume's diff area: the LMDB environment that holds its pre-images.

This module implements the storage side of design §3.1-§3.3 and nothing that
touches the backing filesystem:

- read rule: the value of an object in snapshot ``i`` is the pre-image with
  the smallest sequence ``>= i`` (one ``set_range``), else the live value;
- the "no pre-image with sequence >= newest" test of the write rule, and storing a
  pre-image without ever overwriting one (the first capture wins);
- delete rule: deleting snapshot ``d`` walks only the ``bysnap`` keys in
  ``[d, e)`` and keeps a pre-image exactly when the previous remaining
  snapshot ``p`` exists and the object has no pre-image in ``[p, d)``;
- snapshot records, sequence numbers (never reused), size accounting, and
  graveyard bookkeeping;
- damage marks (design §9.3): an object changed while protection had lapsed
  is damaged in every snapshot up to the newest one when it was marked; marks
  older than the oldest remaining snapshot are dropped with it;
- who made each captured change (design §3.14, `diffarea.provenance`): an
  author record has its pre-image's key, and the delete rule drops it with
  that pre-image (`authors` is None in a format 3 area opened read-only);
- the bytes of data-block pre-images live in the block store (blockstore.py),
  beside the environment or, when the diff area was created so (``META_BLOCKS``
  in ``meta``), in ``<backing>/.shadowfs/blocks.dat`` on the volume itself;
  an extent whose last reference is dropped is recorded in ``freed`` within
  the same transaction and punched out by ``reclaim`` in a later one.

Every method that reads or writes takes an LMDB transaction from the caller,
so a caller can group many operations into one commit. Only the volume's mount
process writes; the daemon and the browser open the environment read-only.

Every transaction on a diff area is begun with ``buffers=False`` (py-lmdb's
default): keys and values come back as ``bytes`` that stay valid after the
transaction, never as memoryviews into the map. `Txn` names that type; the
objects and sequences in the signatures are `schema.BackingIno` and
`schema.Seq`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

import lmdb

from shadowfs.diffarea import schema
from shadowfs.diffarea.blockstore import FILE_NAME, BlockStore, aligned_end
from shadowfs.diffarea.schema import (
    AttrRecord,
    BackingIno,
    BlockRef,
    DamageRecord,
    DirentRecord,
    Seq,
    SnapshotRecord,
)
from shadowfs.errors import DiffAreaError as DiffAreaError

# A transaction begun with buffers=False (the only kind shadowfs begins): its values are bytes.
# A string, because py-lmdb's Transaction is generic only in its stubs, not at run time.
Txn: TypeAlias = "lmdb.Transaction[bytes]"
_Db: TypeAlias = "lmdb._Database"

MAP_SIZE = 1 << 40  # address space only; the file grows with what is stored
MAX_COALESCED_READ = 8 << 20  # the most one pread of adjacent captured blocks may cover


class DiffArea:
    """A volume's LMDB environment and the pre-image rules over it."""

    def __init__(self, env: lmdb.Environment, path: str, readonly: bool, volume: str | None = None, *,
                 backing_fd: int | None = None, blocks_on_volume: bool = False) -> None:
        """Check the format (writable: create or upgrade it) and open every database; `volume` names
        a diff area created now, `blocks_on_volume` says where one created now keeps its block file
        (an existing one keeps its own place, `META_BLOCKS`); `backing_fd` (the backing root) reaches
        a block file on the volume and is not kept."""
        self.env = env
        self.path = path
        self.readonly = readonly
        self._created = False
        self._dbs = self._open_databases(volume, blocks_on_volume)
        self.meta = self._dbs[schema.DB_META]
        self.snapshots_db = self._dbs[schema.DB_SNAPSHOTS]
        self.preimages = self._dbs[schema.DB_PREIMAGES]
        self.bysnap = self._dbs[schema.DB_BYSNAP]
        self.usage = self._dbs[schema.DB_USAGE]
        self.graveyard = self._dbs[schema.DB_GRAVEYARD]
        self.freed = self._dbs[schema.DB_FREED]
        self.damage = self._dbs[schema.DB_DAMAGE]
        self.authors: _Db | None = self._dbs.get(schema.DB_AUTHORS)
        with self.env.begin() as txn:
            self.blocks_on_volume = txn.get(schema.META_BLOCKS, db=self.meta) == schema.BLOCKS_ON_VOLUME
        self.blocks = self._block_store(backing_fd)

    def _block_store(self, backing_fd: int | None) -> BlockStore:
        """The block file: beside the environment, or `<backing>/.shadowfs/blocks.dat` (through a
        duplicate of `backing_fd`, never a path: the live mount may cover the backing directory)."""
        if not self.blocks_on_volume:
            return BlockStore(self.path, writable=not self.readonly)
        hidden = schema.HIDDEN_DIR.decode()
        if backing_fd is None:
            if not self.readonly:
                raise DiffAreaError(f"{self.path}: its block file is on the volume; writing needs the "
                                    "backing directory's descriptor")
            return BlockStore(hidden, writable=False, unreachable="the diff area's block file is on the "
                              "volume and this reader has no descriptor of the backing directory")
        dir_fd = os.dup(backing_fd)
        if self._created:  # nothing refers to bytes a removed volume of this tree may have left
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(hidden, FILE_NAME), dir_fd=dir_fd)
        try:
            return BlockStore(hidden, writable=not self.readonly, dir_fd=dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise

    def attach_backing(self, backing_fd: int) -> None:
        """Reach a block file on the volume through `backing_fd` (not kept), for a reader opened without."""
        if self.blocks_on_volume and self.readonly:
            self.blocks.close()
            self.blocks = self._block_store(backing_fd)

    # ---- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, volume: str | None = None,
             backing_fd: int | None = None, blocks_on_volume: bool = False) -> DiffArea:
        """Open (and, writable and given `volume`, create) the diff area at `path` (see `__init__`)."""
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            raise DiffAreaError(f"no diff area at {path}")
        if not readonly:
            os.makedirs(path, mode=0o700, exist_ok=True)
        try:
            env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=len(schema.ALL_DBS) + 2,
                            readonly=readonly, subdir=True, sync=True, metasync=True,
                            readahead=False, max_readers=512, lock=True)
        except lmdb.Error as exc:
            raise DiffAreaError(f"cannot open diff area {path}: {exc}") from exc
        try:
            env.reader_check()  # clears reader slots of processes that died (kill -9)
            return cls(env, path, readonly, volume, backing_fd=backing_fd, blocks_on_volume=blocks_on_volume)
        except (lmdb.Error, DiffAreaError) as exc:
            env.close()
            if isinstance(exc, DiffAreaError):
                raise
            raise DiffAreaError(f"cannot open diff area {path}: {exc}") from exc

    def _open_databases(self, volume: str | None, blocks_on_volume: bool) -> dict[bytes, _Db]:
        """Every named database, once the format is known to be this one.

        Writable, a new diff area gets its format, first sequence number and volume name, and
        one of an upgradable format (schema.UPGRADABLE_VERSIONS) is upgraded in place; either
        in the one transaction that creates the databases, so a reader never sees a format
        without its databases. Read-only, a format of schema.READABLE_VERSIONS is read with the
        databases it has; any other is refused (the mount process upgrades an old one when it
        opens it; readers try again later).
        """
        if self.readonly:
            meta = self.env.open_db(schema.DB_META, create=False)
            with self.env.begin() as txn:
                version = txn.get(schema.META_FORMAT, db=meta)
            if version is None:
                raise DiffAreaError(f"{self.path}: diff area not initialised")
            self._check_version(schema.read_u32(version))
            return {name: self.env.open_db(name, create=False)
                    for name in schema.databases(schema.read_u32(version))}
        with self.env.begin(write=True) as txn:
            meta = self.env.open_db(schema.DB_META, txn=txn, create=True)
            version = txn.get(schema.META_FORMAT, db=meta)
            found = None if version is None else schema.read_u32(version)
            if found is None:
                self._created = True
                txn.put(schema.META_NEXT_SEQ, schema.u64(1), db=meta)
                if volume is not None:
                    txn.put(schema.META_VOLUME, volume.encode(), db=meta)
                if blocks_on_volume:
                    txn.put(schema.META_BLOCKS, schema.BLOCKS_ON_VOLUME, db=meta)
            elif found not in schema.UPGRADABLE_VERSIONS:
                self._check_version(found)
            if found != schema.FORMAT_VERSION:  # new, or upgraded: the new databases are created below
                txn.put(schema.META_FORMAT, schema.u32(schema.FORMAT_VERSION), db=meta)
            return {name: self.env.open_db(name, txn=txn, create=True) for name in schema.ALL_DBS}

    def _check_version(self, version: int) -> None:
        if version == schema.FORMAT_VERSION or (self.readonly and version in schema.READABLE_VERSIONS):
            return
        if self.readonly and version in schema.UPGRADABLE_VERSIONS:
            raise DiffAreaError(f"{self.path}: diff area format {version}, not yet upgraded to format "
                                f"{schema.FORMAT_VERSION} (its mount process upgrades it when it starts)")
        raise DiffAreaError(f"{self.path}: diff area format {version}, "
                            f"this shadowfs reads format {schema.FORMAT_VERSION}")

    def close(self) -> None:
        self.blocks.close()
        self.env.close()

    @contextmanager
    def read(self) -> Iterator[Txn]:
        with self.env.begin(buffers=False) as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """A write transaction that makes appended block bytes durable before it commits."""
        with self.env.begin(write=True) as txn:
            yield txn
            self.before_commit()

    def before_commit(self) -> None:
        """Run before every commit of a transaction that may reference new block bytes."""
        self.blocks.sync()

    # ---- snapshots -------------------------------------------------------

    def snapshot_list(self, txn: Txn) -> list[SnapshotRecord]:
        cursor = txn.cursor(db=self.snapshots_db)
        return [schema.decode_snapshot(schema.read_seq(key), value) for key, value in cursor]

    def snapshots(self) -> list[SnapshotRecord]:
        with self.read() as txn:
            return self.snapshot_list(txn)

    def snapshot(self, txn: Txn, seq: Seq) -> SnapshotRecord | None:
        value = txn.get(schema.u64(seq), db=self.snapshots_db)
        return None if value is None else schema.decode_snapshot(seq, value)

    def has_snapshot(self, txn: Txn, seq: Seq) -> bool:
        return txn.get(schema.u64(seq), db=self.snapshots_db) is not None

    def newest_seq(self, txn: Txn) -> Seq | None:
        cursor = txn.cursor(db=self.snapshots_db)
        return schema.read_seq(cursor.key()) if cursor.last() else None

    def oldest_seq(self, txn: Txn) -> Seq | None:
        cursor = txn.cursor(db=self.snapshots_db)
        return schema.read_seq(cursor.key()) if cursor.first() else None

    def _neighbours(self, txn: Txn, seq: Seq) -> tuple[Seq | None, Seq | None]:
        """The newest remaining snapshot older than `seq` and the oldest newer one."""
        cursor = txn.cursor(db=self.snapshots_db)
        newer = None
        if cursor.set_range(schema.u64(seq + 1)):
            newer = schema.read_seq(cursor.key())
            older_found = cursor.prev()
        else:
            older_found = cursor.last()
        older = None
        while older_found:
            candidate = schema.read_seq(cursor.key())
            if candidate < seq:
                older = candidate
                break
            older_found = cursor.prev()
        return older, newer

    def record_snapshot(self, txn: Txn, snapshot_id: str, set_id: str,
                        created: str) -> SnapshotRecord:
        next_seq = txn.get(schema.META_NEXT_SEQ, db=self.meta)
        if next_seq is None:  # written when the area was created (_open_databases)
            raise DiffAreaError(f"{self.path}: diff area has no next sequence number")
        seq = schema.read_seq(next_seq)
        txn.put(schema.META_NEXT_SEQ, schema.u64(seq + 1), db=self.meta)
        record = SnapshotRecord(seq, snapshot_id, set_id, created, gmt=self._next_gmt(txn, created))
        txn.put(schema.u64(seq), schema.encode_snapshot(record), db=self.snapshots_db)
        return record

    def _next_gmt(self, txn: Txn, created: str) -> int:
        """The previous-version second of a snapshot created at `created`, recorded as given:
        its creation second, or one past the highest given before (kept in meta, never
        lowered), so a name never passes from a deleted snapshot to a new one."""
        stored = txn.get(schema.META_LAST_GMT, db=self.meta)
        if stored is not None:
            last = schema.read_u64(stored)
        else:  # an area from before names were recorded: past every name its snapshots show
            last = max(schema.previous_version_seconds(self.snapshot_list(txn)).values(), default=-1)
        second = max(schema.created_second(created), last + 1)
        txn.put(schema.META_LAST_GMT, schema.u64(second), db=self.meta)
        return second

    def set_held(self, txn: Txn, seq: Seq, held: str | None) -> SnapshotRecord:
        """Hold snapshot `seq` (since `held`, a UTC time) or release it (None)."""
        record = self.snapshot(txn, seq)
        if record is None:
            raise DiffAreaError(f"no snapshot with sequence {seq}")
        record = dataclasses.replace(record, held=held)
        txn.put(schema.u64(seq), schema.encode_snapshot(record), db=self.snapshots_db)
        return record

    def oldest_unheld(self, txn: Txn) -> SnapshotRecord | None:
        """The oldest snapshot that is not held (the first to go when the diff area is full)."""
        return next((record for record in self.snapshot_list(txn) if record.held is None), None)

    def delete_snapshot(self, txn: Txn, seq: Seq) -> int:
        """Delete snapshot `seq` by the delete rule; returns the bytes freed."""
        if txn.get(schema.u64(seq), db=self.snapshots_db) is None:
            raise DiffAreaError(f"no snapshot with sequence {seq}")
        older, newer = self._neighbours(txn, seq)
        freed = 0
        cursor = txn.cursor(db=self.bysnap)
        found = cursor.set_range(schema.u64(seq))
        while found:
            key_seq, obj = schema.split_bysnap_key(cursor.key())
            if newer is not None and key_seq >= newer:
                break
            if older is not None and not self.has_preimage_in(txn, obj, older, seq):
                found = cursor.next()  # it now holds the value `older` sees
                continue
            key = schema.preimage_key(obj, key_seq)
            value = txn.get(key, db=self.preimages)
            if value is not None:
                txn.delete(key, db=self.preimages)
                size = self._stored_size(obj, key, value)
                if obj[:1] != b"B" and self.authors is not None:  # its author record goes with it
                    author = txn.pop(key, db=self.authors)
                    size += 0 if author is None else len(key) + len(author)
                freed += size
                self.add_usage(txn, key_seq, -size)
                if obj[:1] == b"B":
                    ref = schema.decode_block_ref(value)
                    if ref.offset is not None:
                        txn.put(schema.extent_key(ref.offset, ref.length), b"", db=self.freed)
            found = cursor.delete() and bool(cursor.key())  # False past the last key
        txn.delete(schema.u64(seq), db=self.snapshots_db)
        if older is None:  # the oldest went: marks no remaining snapshot is as old as are dropped
            self._drop_damage_below(txn, self.oldest_seq(txn))
        return freed

    # ---- pre-images ------------------------------------------------------

    def preimage(self, txn: Txn, obj: bytes, seq: Seq) -> bytes | None:
        """The read rule: the pre-image of `obj` with the smallest sequence >= seq."""
        cursor = txn.cursor(db=self.preimages)
        if not cursor.set_range(schema.preimage_key(obj, seq)):
            return None
        key = cursor.key()
        if len(key) == len(obj) + schema.SEQ_BYTES and key.startswith(obj):
            return cursor.value()
        return None

    def has_preimage_in(self, txn: Txn, obj: bytes, low: Seq, high: Seq) -> bool:
        """Whether `obj` has a pre-image with sequence in [low, high)."""
        cursor = txn.cursor(db=self.preimages)
        if not cursor.set_range(schema.preimage_key(obj, low)):
            return False
        key = cursor.key()
        if len(key) != len(obj) + schema.SEQ_BYTES or not key.startswith(obj):
            return False
        return schema.read_u64(key, len(obj)) < high

    def put_preimage(self, txn: Txn, obj: bytes, seq: Seq, value: bytes) -> bool:
        """Store a pre-image unless one exists; True if stored (first capture wins)."""
        key = schema.preimage_key(obj, seq)
        if not txn.put(key, value, overwrite=False, db=self.preimages):
            return False
        txn.put(schema.bysnap_key(seq, obj), b"", db=self.bysnap)
        self.add_usage(txn, seq, self._stored_size(obj, key, value))
        return True

    @staticmethod
    def _stored_size(obj: bytes, key: bytes, value: bytes) -> int:
        """What a pre-image costs: its key and value, plus its bytes in the block store."""
        size = len(key) + len(value)
        if obj[:1] == b"B":
            ref = schema.decode_block_ref(value)
            if ref.offset is not None:
                size += ref.length
        return size

    def put_block(self, txn: Txn, ino: BackingIno, block: int, seq: Seq, data: bytes) -> bool:
        """Store a data block's pre-image (bytes in the block store) unless one exists."""
        obj = schema.block_object(ino, block)
        if txn.get(schema.preimage_key(obj, seq), db=self.preimages) is not None:
            return False
        ref = BlockRef(None, len(data)) if schema.is_zero(data) else BlockRef(self.blocks.append(data),
                                                                           len(data))
        return self.put_preimage(txn, obj, seq, schema.encode_block_ref(ref))

    def put_block_refs(self, txn: Txn, ino: BackingIno, seq: Seq, refs: dict[int, BlockRef]) -> None:
        """`put_block_ref` for many blocks of one file that have no pre-image at `seq` yet (the
        caller checked, in the same transaction), with one update of the accounting."""
        added = 0
        for block, ref in refs.items():
            obj = schema.block_object(ino, block)
            key = schema.preimage_key(obj, seq)
            value = schema.encode_block_ref(ref)
            if txn.put(key, value, overwrite=False, db=self.preimages):
                txn.put(schema.bysnap_key(seq, obj), b"", db=self.bysnap)
                added += self._stored_size(obj, key, value)
        if added:
            self.add_usage(txn, seq, added)

    def free_extent(self, txn: Txn, ref: BlockRef) -> None:
        """Bytes in the block store no pre-image refers to: punched out after this commit."""
        if ref.offset is not None:
            txn.put(schema.extent_key(ref.offset, ref.length), b"", db=self.freed)

    def put_block_ref(self, txn: Txn, ino: BackingIno, block: int, seq: Seq, ref: BlockRef) -> bool:
        """Store a data block's pre-image whose bytes are already in the block store (or a hole:
        `ref.offset` None); False when one exists at `seq` (its extent then goes unreferenced)."""
        return self.put_preimage(txn, schema.block_object(ino, block), seq, schema.encode_block_ref(ref))

    def attr_at(self, txn: Txn, ino: BackingIno, seq: Seq) -> AttrRecord | None:
        value = self.preimage(txn, schema.attr_object(ino), seq)
        return None if value is None else schema.decode_attr(value)

    def block_at(self, txn: Txn, ino: BackingIno, block: int, seq: Seq) -> bytes | None:
        value = self.preimage(txn, schema.block_object(ino, block), seq)
        if value is None:
            return None
        ref = schema.decode_block_ref(value)
        return bytes(ref.length) if ref.offset is None else self.blocks.read(ref.offset, ref.length)

    def block_refs(self, txn: Txn, ino: BackingIno, blocks: Iterable[int],
                   seq: Seq) -> dict[int, BlockRef]:
        """The read rule for several blocks of one file: where each captured one is."""
        cursor = txn.cursor(db=self.preimages)
        found: dict[int, BlockRef] = {}
        for block in blocks:
            obj = schema.block_object(ino, block)
            if cursor.set_range(schema.preimage_key(obj, seq)):
                key = cursor.key()
                if len(key) == len(obj) + schema.SEQ_BYTES and key.startswith(obj):
                    found[block] = schema.decode_block_ref(cursor.value())
        return found

    def block_refs_range(self, txn: Txn, ino: BackingIno, start: int, stop: int,
                         seq: Seq) -> dict[int, BlockRef]:
        """`block_refs` for the blocks [start, stop) of one file, in one cursor walk that
        jumps over blocks without a pre-image (one ``set_range`` per captured block)."""
        prefix = schema.blocks_prefix(ino)
        key_length = len(prefix) + 8 + schema.SEQ_BYTES
        cursor = txn.cursor(db=self.preimages)
        found: dict[int, BlockRef] = {}
        positioned = cursor.set_range(schema.preimage_key(schema.block_object(ino, start), seq))
        while positioned:
            key = cursor.key()
            if len(key) != key_length or not key.startswith(prefix):
                break
            block = schema.read_u64(key, len(prefix))
            if block >= stop:
                break
            if schema.read_u64(key, len(prefix) + 8) >= seq:  # the smallest sequence >= seq
                found[block] = schema.decode_block_ref(cursor.value())
                block += 1
            # else: only older pre-images of this block so far: jump to its keys >= seq
            positioned = cursor.set_range(schema.preimage_key(schema.block_object(ino, block), seq))
        return found

    def read_blocks_into(self, refs: dict[int, BlockRef], out: memoryview, offset: int) -> None:
        """Put the bytes behind `refs` (block -> ref of one file) into `out`, which holds the
        file's bytes from `offset` on and is zero where the blocks are.

        Blocks that follow each other in the file and whose extents follow each other
        in blocks.dat (captured together) are read with one preadv straight into
        `out`; zero blocks and the bytes past a short image need no read.
        """
        end = offset + len(out)
        for first, start, length in self._extent_runs(refs):
            low, high = max(offset, first * schema.BLOCK_SIZE), min(end, first * schema.BLOCK_SIZE + length)
            if low < high:
                self.blocks.readinto(start + low - first * schema.BLOCK_SIZE, out[low - offset:high - offset])

    @staticmethod
    def _extent_runs(refs: dict[int, BlockRef]) -> list[tuple[int, int, int]]:
        """(first block, extent offset, length) of each run of stored blocks that is
        contiguous both in the file and in blocks.dat."""
        runs: list[tuple[int, int, int]] = []
        for block in sorted(refs):
            ref = refs[block]
            if ref.offset is None:
                continue
            if runs:
                first, start, length = runs[-1]
                if (first * schema.BLOCK_SIZE + length == block * schema.BLOCK_SIZE  # previous was full
                        and start + length == ref.offset and length + ref.length <= MAX_COALESCED_READ):
                    runs[-1] = (first, start, length + ref.length)
                    continue
            runs.append((block, ref.offset, ref.length))
        return runs

    def read_blocks(self, refs: dict[int, BlockRef]) -> dict[int, bytes]:
        """The bytes behind `refs`; extents that follow each other in blocks.dat (blocks
        captured together) are read with one pread."""
        result = {block: bytes(ref.length) for block, ref in refs.items() if ref.offset is None}
        stored = sorted((ref.offset, ref.length, block) for block, ref in refs.items()
                        if ref.offset is not None)
        i = 0
        while i < len(stored):
            j = i
            while (j + 1 < len(stored) and stored[j + 1][0] == aligned_end(stored[j][0], stored[j][1])
                   and stored[j + 1][0] + stored[j + 1][1] - stored[i][0] <= MAX_COALESCED_READ):
                j += 1
            start = stored[i][0]
            data = self.blocks.read(start, stored[j][0] + stored[j][1] - start)
            for offset, length, block in stored[i:j + 1]:
                result[block] = data[offset - start:offset - start + length]
            i = j + 1
        return result

    def dirent_at(self, txn: Txn, dir_ino: BackingIno, name: bytes,
                  seq: Seq) -> DirentRecord | None:
        value = self.preimage(txn, schema.dirent_object(dir_ino, name), seq)
        return None if value is None else schema.decode_dirent(value)

    def dirent_overlay(self, txn: Txn, dir_ino: BackingIno,
                       seq: Seq) -> dict[bytes, DirentRecord]:
        """Every entry of `dir_ino` that has a pre-image at or after `seq`, by name."""
        prefix = schema.dirents_prefix(dir_ino)
        result: dict[bytes, DirentRecord] = {}
        cursor = txn.cursor(db=self.preimages)
        found = cursor.set_range(prefix)
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                break
            obj, key_seq = schema.split_preimage_key(key)
            if key_seq >= seq:
                result[schema.dirent_name(obj)] = schema.decode_dirent(cursor.value())
                found = self._skip_object(cursor, obj)
            else:
                found = cursor.set_range(schema.preimage_key(obj, seq))
        return result

    @staticmethod
    def _skip_object(cursor: lmdb.Cursor[bytes], obj: bytes) -> bool:
        """Move the cursor past every key of `obj`."""
        if not cursor.set_range(obj + b"\xff" * schema.SEQ_BYTES):
            return False
        key = cursor.key()
        if len(key) == len(obj) + schema.SEQ_BYTES and key.startswith(obj):
            return cursor.next()
        return True

    def blocks_captured(self, txn: Txn, ino: BackingIno, seq: Seq) -> bool:
        """Whether any data block of `ino` has a pre-image (any sequence) — cheap test."""
        prefix = schema.blocks_prefix(ino)
        cursor = txn.cursor(db=self.preimages)
        return cursor.set_range(prefix) and cursor.key().startswith(prefix)

    # ---- accounting ------------------------------------------------------

    def add_usage(self, txn: Txn, seq: Seq, delta: int) -> None:
        key = schema.u64(seq)
        old = txn.get(key, db=self.usage)
        total = (schema.read_u64(old) if old else 0) + delta
        if total > 0:
            txn.put(key, schema.u64(total), db=self.usage)
        elif old is not None:
            txn.delete(key, db=self.usage)

    def used_bytes(self, txn: Txn | None = None) -> int:
        if txn is None:
            with self.read() as own:
                return self.used_bytes(own)
        return sum(schema.read_u64(value) for _, value in txn.cursor(db=self.usage))

    def snapshot_bytes(self, txn: Txn, seq: Seq) -> int:
        """Bytes held for snapshot `seq`: its sequence up to the next remaining snapshot."""
        _, newer = self._neighbours(txn, seq)
        total = 0
        cursor = txn.cursor(db=self.usage)
        found = cursor.set_range(schema.u64(seq))
        while found:
            key_seq = schema.read_seq(cursor.key())
            if newer is not None and key_seq >= newer:
                break
            total += schema.read_u64(cursor.value())
            found = cursor.next()
        return total

    def disk_bytes(self) -> int:
        """What the diff area takes on disk: the LMDB file and the block store."""
        try:
            lmdb_bytes = os.stat(os.path.join(self.path, "data.mdb")).st_blocks * 512
        except FileNotFoundError:
            lmdb_bytes = 0
        return lmdb_bytes + self.blocks.disk_bytes()

    def reclaim(self, txn: Txn) -> int:
        """Punch out every freed extent (their references are gone in committed
        transactions) and forget them; returns how many."""
        count = 0
        cursor = txn.cursor(db=self.freed)
        found = cursor.first()
        while found:
            self.blocks.punch(*schema.split_extent_key(cursor.key()))
            count += 1
            found = cursor.delete() and bool(cursor.key())
        return count

    # ---- graveyard -------------------------------------------------------

    def graveyard_add(self, txn: Txn, ino: BackingIno, death_seq: Seq) -> None:
        txn.put(schema.u64(ino), schema.u64(death_seq), db=self.graveyard)

    def graveyard_has(self, txn: Txn, ino: BackingIno) -> bool:
        return txn.get(schema.u64(ino), db=self.graveyard) is not None

    def graveyard_expired(self, txn: Txn) -> list[BackingIno]:
        """Graveyard inodes no remaining snapshot can see (died before the oldest)."""
        oldest = self.oldest_seq(txn)
        return [schema.read_ino(key) for key, value in txn.cursor(db=self.graveyard)
                if oldest is None or schema.read_seq(value) < oldest]

    def graveyard_remove(self, txn: Txn, ino: BackingIno) -> None:
        txn.delete(schema.u64(ino), db=self.graveyard)

    # ---- damage marks (design §9.3) ----------------------------------------

    def mark_damaged(self, txn: Txn, ino: BackingIno, path: str | None, cause: str, found: str) -> bool:
        """Mark object `ino` damaged in every snapshot that exists now (sequence <= the newest): it
        changed while protection had lapsed, so reading it there fails with EIO.

        False, and nothing written, when there is no snapshot. An object marked before keeps
        the larger of the two sequences; path (unless the new one is None), cause and found
        are replaced by the new ones.
        """
        newest = self.newest_seq(txn)
        if newest is None:
            return False
        key = schema.u64(ino)
        old = txn.get(key, db=self.damage)
        seq = newest
        if old is not None:
            before = schema.decode_damage(ino, old)
            seq = max(seq, before.seq)
            if path is None:
                path = before.path
        txn.put(key, schema.encode_damage(DamageRecord(ino, seq, path, cause, found)), db=self.damage)
        return True

    def damaged_through(self, txn: Txn, ino: BackingIno) -> Seq | None:
        """The newest sequence in which `ino` is damaged (every snapshot <= it), or None."""
        value = txn.get(schema.u64(ino), db=self.damage)
        return None if value is None else schema.decode_damage(ino, value).seq

    def damage_list(self, txn: Txn, seq: Seq) -> list[DamageRecord]:
        """Every object damaged in snapshot `seq`, by inode number."""
        records = (schema.decode_damage(schema.read_ino(key), value)
                   for key, value in txn.cursor(db=self.damage))
        return [record for record in records if record.seq >= seq]

    def damage_count(self, txn: Txn, seq: Seq) -> int:
        """How many objects are damaged in snapshot `seq`."""
        return self.damage_counts(txn, [seq])[seq]

    def damage_counts(self, txn: Txn, seqs: Iterable[Seq]) -> dict[Seq, int]:
        """`damage_count` of several snapshots, in one pass over the marks."""
        wanted = sorted(set(seqs))
        counts = dict.fromkeys(wanted, 0)
        if not wanted or txn.stat(self.damage)["entries"] == 0:
            return counts
        marks = sorted(schema.decode_damage(schema.read_ino(key), value).seq
                       for key, value in txn.cursor(db=self.damage))
        for seq in wanted:
            counts[seq] = len(marks) - bisect.bisect_left(marks, seq)
        return counts

    def _drop_damage_below(self, txn: Txn, oldest: Seq | None) -> None:
        """Forget marks that no remaining snapshot is as old as (all of them when none remains)."""
        if txn.stat(self.damage)["entries"] == 0:
            return
        if oldest is None:
            txn.drop(self.damage, delete=False)
            return
        cursor = txn.cursor(db=self.damage)
        found = cursor.first()
        while found:
            if schema.decode_damage(schema.read_ino(cursor.key()), cursor.value()).seq < oldest:
                found = cursor.delete() and bool(cursor.key())
            else:
                found = cursor.next()
