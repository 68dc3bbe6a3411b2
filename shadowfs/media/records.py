"""Manifest records of an image: one JSON object per line, one line per file operation.

One job: the exact shape of a manifest line, its strict parsing (untrusted
media) and its encoding. A record is an operation on one path of one volume:

- ``{"op": "delete", "volume", "path"}``: the path (and all below it) is gone
  since the image before (incremental and differential images only);
- ``{"op": "put", "volume", "path", "kind", ...metadata..., "data", "link"}``:
  the object at the path as it was at the snapshot.

Metadata: ``kind`` (dir, file, symlink, fifo, chr, blk, sock: `diffarea.schema.KINDS`), ``mode``
(with the type bits), ``uid``, ``gid``, ``size``, ``atime_ns``, ``mtime_ns``,
``ctime_ns``, ``nlink``, ``rdev``, ``ino`` (the object's inode number in the
snapshot, masked to the backing inode for shadowfs browsers), ``xattrs``
(name -> base64 value), ``target`` (symlinks), ``link`` (hard links: the path
of the group's first member, which is restored first), ``component`` and
``writer`` (absent for data outside any writer's components), ``source``
(the path, relative to the volume's source tree named in image.json, the
bytes were read from, when it is not the record's own path: an alternate
location), ``sha256`` (of the whole
content, when the whole file was read), ``partial`` (writer partial-file
ranges). Keys whose value would be null, and empty ``xattrs``, are left out.

``data`` of a regular file says where its bytes are:

- ``{"how": "full", "extents": [[offset, length], ...], "pack", "offset",
  "length", "sha256"}``: the file is ``size`` bytes of zeros (holes) except
  the extents, whose bytes follow each other in the blob at ``pack``/``offset``;
- ``"patch"``: the same, written into the file restored so far, which is then
  cut or extended to ``size``;
- ``{"how": "keep"}``: the content did not change; only metadata is applied;
- ``"ref"``: like full, but the blob lives in an earlier image of the chain
  (``"image"``), whose file did not change.

Paths are relative to the volume root (``""`` is the root) in the form
`shadowfs.safefs.check_rel_path` accepts; names that are not UTF-8 are kept
with Python's surrogate escapes (``\\udcXX`` in JSON). Every integer is
checked against its range, every list against its shape; anything else is a
`RecordError` naming the line and the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import stat
from dataclasses import dataclass, field
from typing import Any, cast

from shadowfs.diffarea.schema import KIND_OF_FMT, KINDS
from shadowfs.documents import RangeError, validate_ranges
from shadowfs.errors import RecordError as RecordError
from shadowfs.linux.confined import UnsafePath, check_name, check_rel_path

DATA_HOWS = ("full", "patch", "keep", "ref")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
U32 = 1 << 32
U64 = 1 << 64
I64 = 1 << 63
MAX_XATTR_VALUE = 1 << 16
MAX_PACK = 1 << 20


def kind_of_mode(mode: int) -> str:
    kind = KIND_OF_FMT.get(stat.S_IFMT(mode))
    if kind is None:
        raise RecordError(f"mode {mode:o} has no known file type")
    return kind


@dataclass(slots=True)
class DataRef:
    """Where a regular file's bytes are (see the module docstring)."""

    how: str
    extents: list[tuple[int, int]] = field(default_factory=list)
    pack: int = 0
    offset: int = 0
    length: int = 0
    sha256: str = ""
    image: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.how == "keep":
            return {"how": "keep"}
        out: dict[str, Any] = {"how": self.how, "extents": [list(e) for e in self.extents],
                               "pack": self.pack, "offset": self.offset, "length": self.length,
                               "sha256": self.sha256}
        if self.image is not None:
            out["image"] = self.image
        return out

    @property
    def has_blob(self) -> bool:
        return self.how != "keep" and self.length > 0


@dataclass(slots=True)
class Record:
    """One manifest line."""

    op: str
    volume: str
    path: str
    kind: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    rdev: int = 0
    ino: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    target: str | None = None
    link: str | None = None
    component: str | None = None
    writer: str | None = None
    source: str | None = None
    data: DataRef | None = None
    sha256: str | None = None
    partial: list[tuple[int, int]] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.op == "delete":
            return {"op": "delete", "volume": self.volume, "path": self.path}
        full = {
            "op": "put", "volume": self.volume, "path": self.path, "kind": self.kind, "mode": self.mode,
            "uid": self.uid, "gid": self.gid, "size": self.size, "atime_ns": self.atime_ns,
            "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns, "nlink": self.nlink, "rdev": self.rdev,
            "ino": self.ino,
            "xattrs": {k: base64.b64encode(v).decode() for k, v in sorted(self.xattrs.items())},
            "target": self.target, "link": self.link, "component": self.component, "writer": self.writer,
            "source": self.source, "data": None if self.data is None else self.data.to_json(),
            "sha256": self.sha256,
            "partial": None if self.partial is None else [list(r) for r in self.partial],
        }
        return {key: value for key, value in full.items() if value is not None and value != {}}


def encode_line(record: Record) -> bytes:
    """One manifest line (ASCII JSON, surrogate escapes kept as \\udcXX), newline included."""
    return json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"


# ---- parsing (untrusted input) ------------------------------------------------------------------


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise RecordError(f"{key}: {value!r} is not an integer in [{low}, {high})")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{key}: {value!r} is not a string or null")
    return value


def _sorted_valid(pairs: list[tuple[int, int]], file_size: int | None) -> bool:
    """The common case, checked quickly: integers, sorted, disjoint, non-empty, inside the file.
    (Anything else goes to `validate_ranges`, which also names what is wrong.)"""
    limit = U64 if file_size is None else min(U64, file_size)
    end = 0
    for offset, length in pairs:
        if type(offset) is not int or type(length) is not int or offset < end or length < 1:
            return False
        end = offset + length
    return end <= limit


def _ranges(value: Any, key: str, file_size: int | None) -> list[tuple[int, int]]:
    if not isinstance(value, list) or not all(isinstance(r, list) and len(r) == 2 for r in value):
        raise RecordError(f"{key}: not a list of [offset, length] pairs")
    if not value:
        return []
    pairs = [(r[0], r[1]) for r in value]
    if _sorted_valid(pairs, file_size):
        return pairs
    try:
        checked = validate_ranges([(r[0], r[1]) for r in value], file_size=file_size)
    except RangeError as exc:
        raise RecordError(f"{key}: {exc}") from None
    return [(r.offset, r.length) for r in checked]


def volume_name(value: Any) -> str:
    if not isinstance(value, str) or not VOLUME_RE.match(value):
        raise RecordError(f"volume: {value!r} is not a volume name")
    return value


def parse_data(value: Any, size: int) -> DataRef:
    if not isinstance(value, dict):
        raise RecordError("data: not an object")
    how = value.get("how")
    if how not in DATA_HOWS:
        raise RecordError(f"data.how: {how!r} is not one of {', '.join(DATA_HOWS)}")
    if how == "keep":
        return DataRef("keep")
    extents = _ranges(value.get("extents"), "data.extents", size)
    extents.sort()
    length = _int(value, "length", 0, U64)
    if sum(e[1] for e in extents) != length:
        raise RecordError(f"data: extents cover {sum(e[1] for e in extents)} bytes, blob is {length}")
    sha = value.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise RecordError(f"data.sha256: {sha!r} is not a sha256 hex digest")
    image = _opt_str(value, "image")
    if (how == "ref") != (image is not None):
        raise RecordError("data.image: given exactly when how is 'ref'")
    if image is not None and not IMAGE_ID_RE.match(image):
        raise RecordError(f"data.image: {image!r} is not an image id")
    pack, offset = value.get("pack"), value.get("offset")
    if not (type(pack) is int and 0 <= pack < MAX_PACK and type(offset) is int and 0 <= offset < U64):
        pack, offset = _int(value, "pack", 0, MAX_PACK), _int(value, "offset", 0, U64)
    return DataRef(how, extents, pack, offset, length, sha, image)


_INT_FIELDS = (("uid", 0, U32 - 1), ("gid", 0, U32 - 1), ("size", 0, I64), ("atime_ns", -I64, I64),
               ("mtime_ns", -I64, I64), ("ctime_ns", -I64, I64), ("nlink", 0, U32), ("rdev", 0, U64),
               ("ino", 0, U64))


def parse_record(obj: Any) -> Record:
    """A `Record` from one decoded JSON line, or RecordError."""
    if not isinstance(obj, dict):
        raise RecordError("not a JSON object")
    op = obj.get("op")
    volume = volume_name(obj.get("volume"))
    path = obj.get("path")
    if not isinstance(path, str):
        raise RecordError(f"path: path {path!r} is not a string")  # as `check_rel_path` says it
    try:
        check_rel_path(path)
    except UnsafePath as exc:
        raise RecordError(f"path: {exc}") from None
    if op == "delete":
        if path == "":
            raise RecordError("path: the volume root cannot be deleted")
        return Record("delete", volume, path)
    if op != "put":
        raise RecordError(f"op: {op!r} is not put or delete")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise RecordError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    mode = _int(obj, "mode", 0, U32)
    if stat.S_IFMT(mode) != KINDS[kind] or mode & ~(0o170000 | 0o7777):
        raise RecordError(f"mode: {mode:o} does not fit kind {kind}")
    if path == "" and kind != "dir":
        raise RecordError("kind: the volume root must be a directory")
    values = [obj.get(key) for key, _, _ in _INT_FIELDS]
    if not all(type(v) is int and low <= v < high
               for v, (_, low, high) in zip(values, _INT_FIELDS, strict=True)):
        values = [_int(obj, key, low, high) for key, low, high in _INT_FIELDS]  # names the bad field
    uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink, rdev, ino = cast(list[int], values)  # checked
    record = Record("put", volume, path, kind, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, nlink,
                    rdev, ino)
    xattrs = obj.get("xattrs")
    record.xattrs = {} if xattrs is None or xattrs == {} else _xattrs(xattrs)
    record.target = _opt_str(obj, "target")
    if (kind == "symlink") != (record.target is not None):
        raise RecordError("target: given exactly for symlinks")
    if record.target is not None and (not record.target or "\0" in record.target
                                      or len(record.target.encode("utf-8", "surrogateescape")) > 4095):
        raise RecordError("target: empty, NUL or longer than 4095 bytes")
    record.link = _opt_str(obj, "link")
    if record.link is not None:
        try:
            check_rel_path(record.link)
        except UnsafePath as exc:
            raise RecordError(f"link: {exc}") from None
        if kind == "dir" or record.link in ("", path):
            raise RecordError("link: directories, the root and a path itself cannot be hard-link targets")
    record.component = _opt_str(obj, "component")
    record.writer = _opt_str(obj, "writer")
    record.source = _opt_str(obj, "source")
    data = obj.get("data")
    if data is not None:
        if kind != "file" or record.link is not None:
            raise RecordError("data: only regular files that are not hard links to an earlier path have data")
        record.data = parse_data(data, record.size)
    elif kind == "file" and record.link is None:
        raise RecordError("data: missing for a regular file")
    sha = obj.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not SHA256_RE.match(sha)):
        raise RecordError(f"sha256: {sha!r} is not a sha256 hex digest")
    record.sha256 = sha
    partial = obj.get("partial")
    if partial is not None:
        if kind != "file":
            raise RecordError("partial: only regular files have partial ranges")
        record.partial = _ranges(partial, "partial", None)
    return record


def _xattrs(value: Any) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise RecordError("xattrs: not an object")
    out: dict[str, bytes] = {}
    for name, encoded in value.items():
        try:
            check_name(name)
        except UnsafePath:
            raise RecordError(f"xattrs: bad name {name!r}") from None
        if "." not in name:
            raise RecordError(f"xattrs: name {name!r} has no namespace")
        if not isinstance(encoded, str):
            raise RecordError(f"xattrs: value of {name!r} is not base64 text")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise RecordError(f"xattrs: value of {name!r} is not base64") from None
        if len(raw) > MAX_XATTR_VALUE:
            raise RecordError(f"xattrs: value of {name!r} is longer than {MAX_XATTR_VALUE} bytes")
        out[name] = raw
    return out


def parse_line(obj: Any, number: int) -> Record:
    """`parse_record` of manifest line `number`, already decoded from JSON."""
    try:
        return parse_record(obj)
    except RecordError as exc:
        raise RecordError(f"manifest line {number}: {exc}") from None


def decode_line(line: bytes, number: int) -> Record:
    """Parse manifest line `number` (1-based, for the message)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"manifest line {number}: not JSON ({exc})") from None
    try:
        return parse_record(obj)
    except RecordError as exc:
        raise RecordError(f"manifest line {number}: {exc}") from None
