"""Tree manifests: what a tree looked like, to compare two trees exactly.

One job: record everything rsync -aHAX and a backup tool look at, per path
(type, size, mode, owner, mtime, ctime, link count, device number, content
hash, symlink target, xattrs and hard-link group), and list the differences
between two such records. Hard links are recorded as groups (the first path of
the group) rather than raw inode numbers, because the snapshot browser numbers
inodes its own way. ctime can be left out for copies, which cannot keep it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Any

Manifest = dict[str, tuple[Any, ...]]


def xattrs_of(path: str) -> tuple[tuple[str, bytes], ...]:
    """Every xattr of `path` itself (links not followed), sorted; errors other than
    "not supported here" propagate, so a failing listxattr is never read as "none"."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return ()
        raise
    return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False)) for name in names))


def file_digest(path: str) -> str:
    """sha256 of a file's content, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(root: str, *, with_ctime: bool = True) -> Manifest:
    """Every object under `root`, by path relative to it ("." is the root itself)."""
    result: Manifest = {}
    groups: dict[int, str] = {}

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        group = ""
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            group = groups.setdefault(st.st_ino, rel)
        digest = file_digest(path) if stat.S_ISREG(st.st_mode) else ""
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
        result[rel] = (kind, size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                       st.st_ctime_ns if with_ctime else 0, st.st_nlink, st.st_rdev, digest, target,
                       xattrs_of(path), group)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name), os.path.join(rel, name))

    visit(root, ".")
    return result


FIELDS = ("kind", "size", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "nlink", "rdev", "sha256",
          "symlink", "xattrs", "link_group")


def differences(expected: Manifest, got: Manifest, limit: int = 20) -> list[str]:
    """Human-readable differences, at most `limit` of them."""
    out: list[str] = []
    for rel in sorted(set(expected) | set(got)):
        if rel not in got:
            out.append(f"missing: {rel}")
        elif rel not in expected:
            out.append(f"extra: {rel}")
        elif expected[rel] != got[rel]:
            fields = [f"{name}: {a!r} != {b!r}" for name, a, b in zip(FIELDS, expected[rel], got[rel],
                                                                       strict=True) if a != b]
            out.append(f"{rel}: " + "; ".join(fields))
        if len(out) >= limit:
            break
    return out
