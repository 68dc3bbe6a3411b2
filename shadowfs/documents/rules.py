"""Value rules shared by both documents: paths, file specs (wildcards), logical paths, names, text.

Each `check_*` function takes one value and raises `DocumentError` with a short
message (no location: the caller adds the element and attribute) when the value
breaks its rule. They are attached to dataclass fields and run by the builders,
by `validate()` and while reading XML or dicts.

Rules:
- Text: any string XML 1.0 can carry in an attribute (no NUL or other C0
  control characters except TAB, LF, CR; no lone surrogates; not U+FFFE/U+FFFF).
- Path: absolute (`/...`), at most 4096 UTF-8 bytes, no `..` component. A
  trailing `/` is allowed. Optional paths may be empty.
- File spec: a wildcard pattern for one name (no `/`), 1..255 UTF-8 bytes, not
  `.` or `..`. Only `*` (any run, also empty) and `?` (one character) are
  wildcards; every other character, `[` included, is literal. `*.*` means "every
  name", as in VSS.
- Logical path: empty, or non-empty segments separated by a backslash (VSS
  style, `Databases\\Sales`); a component's full path is `logical_path\\name`.
- Component name: non-empty, no backslash.
"""

from __future__ import annotations

import re

from shadowfs.documents.errors import DocumentError

_BAD_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
U64_LIMIT = 1 << 64
PATH_MAX = 4096
NAME_MAX = 255
LOGICAL_PATH_MAX = 1024
SEPARATOR = "\\"


def check_text(value: str) -> None:
    """Any string an XML attribute can carry."""
    bad = _BAD_XML_CHARS.search(value)
    if bad:
        raise DocumentError(f"contains the character U+{ord(bad.group()):04X}, which XML cannot carry")


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def check_path(value: str) -> None:
    """An absolute path with no `..` component."""
    check_text(value)
    if not value:
        raise DocumentError("path is empty")
    if not value.startswith("/"):
        raise DocumentError("path is not absolute (must start with '/')")
    if _utf8_len(value) > PATH_MAX:
        raise DocumentError(f"path is longer than {PATH_MAX} bytes")
    if ".." in value.split("/"):
        raise DocumentError("path has a '..' component")


def check_optional_path(value: str) -> None:
    """Empty, or a path as `check_path` wants it."""
    if value:
        check_path(value)


def check_filespec(value: str) -> None:
    """A wildcard pattern for one file name: `*` and `?` are the only wildcards."""
    check_text(value)
    if not value:
        raise DocumentError("file spec is empty")
    if "/" in value:
        raise DocumentError("file spec contains '/': put directories in the path, not in the file spec")
    if value in (".", ".."):
        raise DocumentError(f"file spec {value!r} names no file")
    if _utf8_len(value) > NAME_MAX:
        raise DocumentError(f"file spec is longer than {NAME_MAX} bytes")


def check_logical_path(value: str) -> None:
    """Empty, or backslash-separated non-empty segments."""
    check_text(value)
    if not value:
        return
    if len(value) > LOGICAL_PATH_MAX:
        raise DocumentError(f"logical path is longer than {LOGICAL_PATH_MAX} characters")
    if value.startswith(SEPARATOR) or value.endswith(SEPARATOR):
        raise DocumentError("logical path starts or ends with a backslash")
    if SEPARATOR * 2 in value:
        raise DocumentError("logical path has an empty segment ('\\\\')")


def check_component_name(value: str) -> None:
    """A non-empty name with no backslash."""
    check_text(value)
    if not value:
        raise DocumentError("component name is empty")
    if SEPARATOR in value:
        raise DocumentError("component name contains a backslash (put the parents in the logical path)")
    if len(value) > NAME_MAX:
        raise DocumentError(f"component name is longer than {NAME_MAX} characters")


def check_u64(value: int) -> None:
    """An unsigned 64-bit integer."""
    if not 0 <= value < U64_LIMIT:
        raise DocumentError(f"{value} is not an unsigned 64-bit integer")


def full_path(logical_path: str, name: str) -> str:
    """A component's full path: `logical_path\\name`, or `name` alone at the root."""
    return f"{logical_path}{SEPARATOR}{name}" if logical_path else name


def is_under(logical_path: str, parent_full_path: str) -> bool:
    """Whether a component with `logical_path` belongs to the component set rooted at `parent_full_path`."""
    return logical_path == parent_full_path or logical_path.startswith(parent_full_path + SEPARATOR)


def filespec_matches(filespec: str, name: str) -> bool:
    """Whether file `name` matches the VSS wildcard `filespec` (case-sensitive; `*.*` is everything).

    Linear-time greedy matching with one backtrack point, so hostile patterns
    such as `*a*a*a*a*b` cannot make it slow.
    """
    if filespec == "*.*":
        filespec = "*"
    p = n = 0
    star = -1
    mark = 0
    while n < len(name):
        if p < len(filespec) and (filespec[p] == "?" or filespec[p] == name[n]):
            p += 1
            n += 1
        elif p < len(filespec) and filespec[p] == "*":
            star = p
            mark = n
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            n = mark
        else:
            return False
    while p < len(filespec) and filespec[p] == "*":
        p += 1
    return p == len(filespec)


def has_wildcard(filespec: str) -> bool:
    """Whether a file spec names exactly one file (no `*` or `?`)."""
    return "*" in filespec or "?" in filespec
