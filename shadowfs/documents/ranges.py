"""Range strings and ranges files (vss §12): the byte ranges of partial files and directed targets.

A *range string* has one of two forms:

- direct: `offset:length[,offset:length...]`, for example `0:4096,65536:512`.
  Each number is an unsigned 64-bit integer written in decimal, or in
  hexadecimal with a `0x`/`0X` prefix (`0x10000:0x200`). No blanks, no empty
  items, no sign.
- a ranges-file reference: `file=/absolute/path`, naming a *ranges file*.

A *ranges file* is binary: a sequence of unsigned 64-bit integers in
little-endian order (the byte order of the VSS platform); the first is the
number of ranges N, then N (offset, length) pairs. Its length must be exactly
8 + 16 * N bytes. The requester backs up and restores it like any other file.

Rules checked by `validate_ranges` (and so by every reader here):
- at least one range; every length is at least 1;
- offset + length <= 2**64 (no range runs past the 64-bit space);
- no two ranges overlap (touching is fine); ranges need not be sorted, because
  directed targets pair source range i with destination range i;
- with `file_size` given, every range ends at or before the end of the file;
- at most 65,536 ranges in a range string and 2**20 in a ranges file by
  default (`max_ranges`), so untrusted input is parsed in bounded time.

Every failure is a `RangeError` naming the range (1-based) and the rule.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from shadowfs.documents.errors import RangeError
from shadowfs.documents.rules import U64_LIMIT, check_path
from shadowfs.linux.atomicfile import write_atomic

RANGES_FILE_PREFIX = "file="
DEFAULT_MAX_RANGES = 1 << 20          # per ranges file
DEFAULT_MAX_STRING_RANGES = 1 << 16   # per direct range string; more belong in a ranges file
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_ITEM = r"(?:0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20})"
_WELL_FORMED = re.compile(rf"{_ITEM}:{_ITEM}(?:,{_ITEM}:{_ITEM})*\Z")
_SEPARATORS = re.compile("[,:]")
_U64 = struct.Struct("<Q")


class ByteRange(NamedTuple):
    """One byte range of a file: `length` bytes starting at `offset`."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        """The offset just past the range."""
        return self.offset + self.length

    def __str__(self) -> str:
        return f"{self.offset}:{self.length}"


def ranges_file_path(text: str) -> str | None:
    """The path of a `file=PATH` range string, or None for a direct range string."""
    if text.startswith(RANGES_FILE_PREFIX):
        return text[len(RANGES_FILE_PREFIX):]
    return None


def ranges_file_reference(path: str) -> str:
    """The range string `file=PATH` for a ranges file (the path must be absolute)."""
    _check_ranges_file_path(path)
    return RANGES_FILE_PREFIX + path


def _check_ranges_file_path(path: str) -> None:
    try:
        check_path(path)
    except RangeError:
        raise
    except ValueError as exc:
        raise RangeError(f"ranges file path {path!r}: {exc}") from None


def _number(token: str, what: str, index: int) -> int:
    if len(token) > 40:
        raise RangeError(f"range {index}: {what} {token[:40]!r}... is too long for a 64-bit integer")
    if not _NUMBER.match(token):
        if not token:
            raise RangeError(f"range {index}: {what} is empty")
        raise RangeError(
            f"range {index}: {what} {token!r} is not a decimal or 0x-hexadecimal unsigned integer")
    value = int(token, 16) if token[:2] in ("0x", "0X") else int(token, 10)
    if value >= U64_LIMIT:
        raise RangeError(f"range {index}: {what} {token} does not fit in 64 bits")
    return value


def parse_range_string(text: str, *, file_size: int | None = None,
                       max_ranges: int = DEFAULT_MAX_STRING_RANGES) -> list[ByteRange]:
    """Parse and validate a direct range string; a `file=` reference is refused (use `resolve_ranges`).

    At most `max_ranges` ranges (65,536 by default): a writer with more uses a
    ranges file, which keeps documents small and their parsing fast.
    """
    if not isinstance(text, str):
        raise RangeError(f"a range string must be str, not {type(text).__name__}")
    if not text:
        raise RangeError("range string is empty")
    if text.startswith(RANGES_FILE_PREFIX):
        raise RangeError(f"{text[:80]!r} names a ranges file, not ranges; read it with read_ranges_file")
    if text.count(",") >= max_ranges:
        raise RangeError(f"range string has {text.count(',') + 1} ranges, more than {max_ranges}: "
                         "use a ranges file")
    if _WELL_FORMED.match(text):  # fast path; the slow one below names what is wrong
        values = [int(t, 16) if t[1:2] in ("x", "X") else int(t) for t in _SEPARATORS.split(text)]
        if max(values) < U64_LIMIT:
            return _checked(list(zip(values[0::2], values[1::2], strict=True)), file_size)
    ranges = []
    for index, item in enumerate(text.split(","), 1):
        if not item:
            raise RangeError(f"range {index} is empty (stray comma in {text[:60]!r})")
        parts = item.split(":")
        if len(parts) != 2:
            raise RangeError(f"range {index} {item[:60]!r} is not offset:length")
        ranges.append(ByteRange(_number(parts[0], "offset", index), _number(parts[1], "length", index)))
    return validate_ranges(ranges, file_size=file_size)


def validate_ranges(ranges: Iterable[ByteRange | tuple[int, int]], *,
                    file_size: int | None = None) -> list[ByteRange]:
    """Check ranges against the rules of this module; return them as a list of `ByteRange`."""
    pairs = []
    for index, item in enumerate(ranges, 1):
        offset, length = item
        if isinstance(offset, bool) or isinstance(length, bool) or not isinstance(offset, int) \
                or not isinstance(length, int):
            raise RangeError(f"range {index}: offset and length must be integers")
        if not 0 <= offset < U64_LIMIT or not 0 <= length < U64_LIMIT:
            raise RangeError(f"range {index} ({offset}:{length}): offset and length must be unsigned 64-bit")
        pairs.append((offset, length))
    return _checked(pairs, file_size)


def _checked(pairs: list[tuple[int, int]], file_size: int | None) -> list[ByteRange]:
    """The rules on (offset, length) pairs already known to be unsigned 64-bit integers."""
    if not pairs:
        raise RangeError("no ranges")
    limit = U64_LIMIT if file_size is None else min(U64_LIMIT, file_size)
    if min(length for _, length in pairs) == 0 or max(offset + length for offset, length in pairs) > limit:
        for index, (offset, length) in enumerate(pairs, 1):  # find the first culprit, for the message
            if length == 0:
                raise RangeError(f"range {index} ({offset}:0) has zero length")
            if offset + length > U64_LIMIT:
                raise RangeError(f"range {index} ({offset}:{length}) runs past 2**64")
            if offset + length > limit:
                raise RangeError(f"range {index} ({offset}:{length}) ends at {offset + length}, "
                                 f"beyond the end of the file (size {file_size})")
    # Sorted by offset, ranges are disjoint iff each starts at or after the end of the one before.
    order = sorted(range(len(pairs)), key=pairs.__getitem__)
    for before, after in zip(order, order[1:], strict=False):
        if pairs[after][0] < pairs[before][0] + pairs[before][1]:
            first, second = sorted((before, after))
            raise RangeError(f"range {first + 1} ({ByteRange(*pairs[first])}) and range {second + 1} "
                             f"({ByteRange(*pairs[second])}) overlap")
    return [ByteRange(offset, length) for offset, length in pairs]


def format_range_string(ranges: Iterable[ByteRange | tuple[int, int]], *, hexadecimal: bool = False) -> str:
    """Write validated ranges as a direct range string (decimal unless `hexadecimal`)."""
    checked = validate_ranges(ranges)
    if hexadecimal:
        return ",".join(f"0x{r.offset:x}:0x{r.length:x}" for r in checked)
    return ",".join(str(r) for r in checked)


def check_range_string(text: str) -> None:
    """Syntax check of either form (direct ranges, or `file=` with an absolute path); for documents."""
    path = ranges_file_path(text) if isinstance(text, str) else None
    if path is not None:
        _check_ranges_file_path(path)
    else:
        parse_range_string(text)


def encode_ranges_file(ranges: Iterable[ByteRange | tuple[int, int]]) -> bytes:
    """The bytes of a ranges file holding `ranges` (validated first)."""
    checked = validate_ranges(ranges)
    out = bytearray(_U64.pack(len(checked)))
    for r in checked:
        out += _U64.pack(r.offset)
        out += _U64.pack(r.length)
    return bytes(out)


def decode_ranges_file(data: bytes, *, file_size: int | None = None,
                       max_ranges: int = DEFAULT_MAX_RANGES) -> list[ByteRange]:
    """Parse and validate the bytes of a ranges file; the count must agree with the length."""
    if len(data) < 8:
        raise RangeError(f"ranges file is {len(data)} bytes, too short to hold the range count (8 bytes)")
    if len(data) % 8:
        raise RangeError(f"ranges file is {len(data)} bytes, not a whole number of 64-bit integers")
    (count,) = _U64.unpack_from(data, 0)
    pairs_bytes = len(data) - 8
    if count > max_ranges:
        raise RangeError(f"ranges file says {count} ranges, more than the limit of {max_ranges}")
    if count * 16 != pairs_bytes:
        raise RangeError(
            f"ranges file count disagrees with its length: it says {count} ranges ({8 + count * 16} bytes) "
            f"but is {len(data)} bytes ({pairs_bytes / 16:g} ranges)")
    values = struct.unpack_from(f"<{2 * count}Q", data, 8)
    return validate_ranges(zip(values[0::2], values[1::2], strict=True), file_size=file_size)


def read_ranges_fd(fd: int, *, name: str = "", file_size: int | None = None,
                   max_ranges: int = DEFAULT_MAX_RANGES) -> list[ByteRange]:
    """Read and validate a ranges file from an open descriptor (from its current offset; not closed).

    For callers that open the file themselves, for example confined to a
    snapshot root; `name` is only used in error messages.
    """
    label = f"ranges file {name!r}" if name else "ranges file"
    limit = 8 + 16 * max_ranges
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise RangeError(f"{label} is not a regular file")
    if st.st_size > limit:
        raise RangeError(f"{label} is {st.st_size} bytes, more than {max_ranges} ranges")
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RangeError(f"{label} grew past {max_ranges} ranges while it was read")
    try:
        return decode_ranges_file(b"".join(chunks), file_size=file_size, max_ranges=max_ranges)
    except RangeError as exc:
        raise RangeError(f"{label}: {exc}") from None


def read_ranges_file(path: str | os.PathLike[str], *, dir_fd: int | None = None, file_size: int | None = None,
                     max_ranges: int = DEFAULT_MAX_RANGES) -> list[ByteRange]:
    """Read and validate a ranges file (a regular file; a symlink as the last component is refused).

    Symlinks in the directories leading to it are followed; to confine the
    lookup to a tree, open the file yourself and use `read_ranges_fd`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise RangeError(f"cannot open ranges file {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        return read_ranges_fd(fd, name=os.fspath(path), file_size=file_size, max_ranges=max_ranges)
    finally:
        os.close(fd)


def write_ranges_file(path: str | os.PathLike[str], ranges: Iterable[ByteRange | tuple[int, int]], *,
                      mode: int = 0o644) -> None:
    """Write a ranges file atomically (temporary file, fsync, rename, fsync of the directory)."""
    write_atomic(path, encode_ranges_file(ranges), mode=mode)


def resolve_ranges(text: str, *, dir_fd: int | None = None, file_size: int | None = None,
                   max_ranges: int = DEFAULT_MAX_RANGES) -> list[ByteRange]:
    """The ranges a range string means: parsed directly, or read from its ranges file.

    A ranges-file path is absolute; pass `dir_fd` of a snapshot root to read it
    relative to that root instead (the leading `/` is stripped).
    """
    path = ranges_file_path(text)
    if path is None:
        return parse_range_string(text, file_size=file_size)
    _check_ranges_file_path(path)
    if dir_fd is not None:
        path = path.lstrip("/")
    return read_ranges_file(path, dir_fd=dir_fd, file_size=file_size, max_ranges=max_ranges)


def check_directed_ranges(source: Sequence[ByteRange], destination: Sequence[ByteRange]) -> None:
    """A directed target copies source range i to destination range i: counts and lengths must agree."""
    if len(source) != len(destination):
        raise RangeError(
            f"directed target has {len(source)} source ranges but {len(destination)} destination ranges")
    for index, (src, dst) in enumerate(zip(source, destination, strict=True), 1):
        if src.length != dst.length:
            raise RangeError(
                f"directed target range {index}: source {src} and destination {dst} differ in length")


def total_length(ranges: Iterable[ByteRange]) -> int:
    """The number of bytes the ranges cover."""
    return sum(r.length for r in ranges)
