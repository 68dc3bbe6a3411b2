"""Who made each captured change: a diff area's ``authors`` records, beside their pre-images.

One job: the storage side of design §3.14. An author record (`schema.AuthorRecord`)
says who made the change that an attribute or directory-entry pre-image
protects: the first change of that object after the snapshot its key names.

Invariants:
- A record is stored under its pre-image's key, in the transaction that
  stores that pre-image, and only when that pre-image is stored (the first
  capture wins, so the first change's author does too): it is as durable as
  the pre-image, and the delete rule (`DiffArea.delete_snapshot`) drops it
  with the pre-image, nothing else.
- Data-block pre-images have no record: the file's attributes are captured
  first, by the same change.
- A record's bytes count in the usage of its sequence, like its pre-image's.
- A format 3 area opened read-only has no ``authors`` database: every lookup
  finds nothing, as for any change whose author is not known.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, DiffAreaError, Txn
from shadowfs.diffarea.schema import AuthorRecord, BackingIno, Seq


def put_author(area: DiffArea, txn: Txn, obj: bytes, seq: Seq, value: bytes) -> bool:
    """Store an encoded author record for the pre-image ``(obj, seq)`` just stored in `txn`
    (never over one that exists); True if stored."""
    if area.authors is None:
        raise DiffAreaError(f"{area.path}: this diff area keeps no authors (format 3, opened read-only)")
    key = schema.preimage_key(obj, seq)
    if not txn.put(key, value, overwrite=False, db=area.authors):
        return False
    area.add_usage(txn, seq, len(key) + len(value))
    return True


def author_at(area: DiffArea, txn: Txn, obj: bytes, seq: Seq) -> AuthorRecord | None:
    """The author of the pre-image stored exactly under ``(obj, seq)``, if one is known."""
    if area.authors is None:
        return None
    value = txn.get(schema.preimage_key(obj, seq), db=area.authors)
    return None if value is None else schema.decode_author(value)


@dataclass(frozen=True)
class Recorded:
    """One pre-image: its object, the sequence it is stored under (the first change of the object
    after that snapshot), its value, and who made that change when known."""

    obj: bytes
    seq: Seq
    value: bytes
    author: AuthorRecord | None


def history(area: DiffArea, txn: Txn, prefix: bytes) -> Iterator[Recorded]:
    """Every pre-image whose object key starts with `prefix`, in key order: an object key gives
    all the pre-images of that object (oldest first), `schema.dirents_prefix` those of every
    entry of a directory."""
    cursor = txn.cursor(db=area.preimages)
    found = cursor.set_range(prefix)
    while found:
        key = cursor.key()
        if not key.startswith(prefix):
            break
        obj, seq = schema.split_preimage_key(key)
        yield Recorded(obj, seq, cursor.value(), author_at(area, txn, obj, seq))
        found = cursor.next()


def attr_history(area: DiffArea, txn: Txn, ino: BackingIno) -> Iterator[Recorded]:
    """The attribute pre-images of `ino`, oldest first (`history` of its attribute object)."""
    return history(area, txn, schema.attr_object(ino))


def data_captured(area: DiffArea, txn: Txn, ino: BackingIno, seq: Seq) -> bool:
    """Whether any data block of `ino` has a pre-image stored under `seq` (its bytes were
    changed after that snapshot), from the ``bysnap`` index: one cursor positioning."""
    prefix = schema.bysnap_key(seq, schema.blocks_prefix(ino))
    cursor = txn.cursor(db=area.bysnap)
    return cursor.set_range(prefix) and cursor.key().startswith(prefix)


def author_fields(record: AuthorRecord) -> dict[str, Any]:
    """An author record as JSON fields: uid, gid, pid, op, time (UTC, ISO 8601 to the
    microsecond), and comm unless it could not be read."""
    when = datetime.fromtimestamp(record.time_ns / 1e9, UTC).isoformat(timespec="microseconds")
    fields: dict[str, Any] = {"uid": record.uid, "gid": record.gid, "pid": record.pid, "op": record.op,
                              "time": when.replace("+00:00", "Z")}
    if record.comm:
        fields["comm"] = record.comm.decode("utf-8", "backslashreplace")
    return fields
