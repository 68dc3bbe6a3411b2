"""Generated trees for backup and restore tests: every kind of object and metadata a restore must
reproduce, and seeded random changes between backups. Plain directories, no FUSE."""

from __future__ import annotations

import os
import random
import stat

from shadowfs.manifest import Manifest, manifest

ODD_NAMES = [" lead space", "new\nline", "tab\there", "\udcff\udcferaw", "-dash", "*star?", "back\\slash",
             "quote'\"", "日本語", "é" * 127 + "x"]  # the last one is 255 bytes


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_tree(root: str, rng: random.Random) -> None:
    """A tree with sparse files, hard links, symlinks, fifos, device nodes, sockets, xattrs, an ACL,
    odd names, a 255-byte name, empty directories, deep nesting, odd modes, owners and times."""
    os.makedirs(root, exist_ok=True)
    j = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    os.mkdir(j("docs"))
    for i in range(12):
        _write(j("docs", f"f{i}.txt"), rng.randbytes(rng.choice([0, 1, 100, 4096, 70_000, 300_000])))
    for name in ODD_NAMES:
        _write(j("docs", name), name.encode("utf-8", "surrogateescape") * 3)
    # sparse files: holes at the start, between and at the end; one all hole; one of explicit zeros
    with open(j("sparse.img"), "wb") as f:
        f.truncate(10 << 20)
        f.seek(1 << 20)
        f.write(rng.randbytes(5000))
        f.seek(5 << 20)
        f.write(b"middle" * 1000)
    with open(j("hole-only"), "wb") as f:
        f.truncate(3 << 20)
    _write(j("zeros"), bytes(200_000))
    # hard links across directories
    os.mkdir(j("links"))
    _write(j("links", "a"), b"linked content")
    os.link(j("links", "a"), j("links", "b"))
    os.link(j("links", "a"), j("docs", "c-link"))
    # symlinks: relative, absolute, dangling, to a directory
    os.symlink("../docs/f1.txt", j("links", "rel"))
    os.symlink("/etc/passwd", j("links", "abs"))
    os.symlink("nowhere/at/all", j("links", "dangling"))
    os.symlink("docs", j("dirlink"))
    os.setxattr(j("links", "rel"), "trusted.tag", b"on a symlink", follow_symlinks=False)
    # special files
    os.mkdir(j("dev"))
    os.mkfifo(j("dev", "fifo"), 0o640)
    os.mknod(j("dev", "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(j("dev", "loop"), stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(j("dev", "sock"), stat.S_IFSOCK | 0o755)
    # xattrs, an ACL, odd modes and owners
    os.setxattr(j("docs", "f1.txt"), "user.color", b"blue")
    os.setxattr(j("docs", "f1.txt"), "user.bin", bytes(range(256)))
    os.setxattr(j("docs"), "user.dir", b"yes")
    os.system(f"setfacl -m u:1234:r {j('docs', 'f2.txt')!r} 2>/dev/null")  # noqa: S605
    os.chmod(j("docs", "f3.txt"), 0o4755)
    os.chmod(j("docs", "f4.txt"), 0)
    os.chown(j("docs", "f5.txt"), 1001, 2002)
    os.chown(j("links", "abs"), 7, 8, follow_symlinks=False)
    # empty directories, deep nesting, a sticky directory
    os.makedirs(j("empty", "inner-empty"))
    deep = j("deep")
    for level in range(40):
        deep = os.path.join(deep, f"level{level:02d}")
    os.makedirs(deep)
    _write(os.path.join(deep, "bottom"), b"down here")
    os.mkdir(j("sticky"), 0o1777)
    os.chmod(j("sticky"), 0o1777)
    set_times(root, rng)


def set_times(root: str, rng: random.Random) -> None:
    """Give every object distinct times, directories last (deepest first)."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = os.path.join(top, name)
            when = rng.randrange(10**17, 2 * 10**18)
            os.utime(path, ns=(when + 123, when), follow_symlinks=False)
    os.utime(root, ns=(10**18, 10**18 + 7))


def mutate(root: str, rng: random.Random, steps: int = 25) -> None:
    """Random changes of every kind: writes (in place, appends, holes), truncations, new and removed
    files, renames of files and directories, links, metadata."""
    for _ in range(steps):
        files, dirs = [], []
        for top, dnames, fnames in os.walk(root):
            dirs += [os.path.join(top, d) for d in dnames]
            files += [os.path.join(top, f) for f in fnames
                      if stat.S_ISREG(os.lstat(os.path.join(top, f)).st_mode)]
        op = rng.choice(["write", "append", "truncate", "create", "remove", "rename", "rename_dir", "link",
                         "chmod", "xattr", "mkdir", "symlink", "rmtree"])
        try:
            if op == "write" and files:
                with open(rng.choice(files), "r+b") as f:
                    f.seek(rng.randrange(0, 400_000))
                    f.write(rng.randbytes(rng.randrange(1, 100_000)))
            elif op == "append" and files:
                with open(rng.choice(files), "ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 50_000)))
            elif op == "truncate" and files:
                os.truncate(rng.choice(files), rng.randrange(0, 200_000))
            elif op == "create":
                _write(os.path.join(rng.choice(dirs + [root]), f"new{rng.randrange(10**6)}"),
                       rng.randbytes(rng.randrange(0, 150_000)))
            elif op == "remove" and files:
                os.unlink(rng.choice(files))
            elif op == "rename" and files:
                os.rename(rng.choice(files), os.path.join(rng.choice(dirs + [root]),
                                                          f"mv{rng.randrange(10**6)}"))
            elif op == "rename_dir" and dirs:
                src = rng.choice(dirs)
                targets = [d for d in dirs + [root] if d != src and not d.startswith(src + "/")]
                os.rename(src, os.path.join(rng.choice(targets), f"dmv{rng.randrange(10**6)}"))
            elif op == "link" and files:
                os.link(rng.choice(files), os.path.join(rng.choice(dirs + [root]),
                                                        f"ln{rng.randrange(10**6)}"))
            elif op == "chmod" and files:
                os.chmod(rng.choice(files), rng.choice([0o600, 0o644, 0o755, 0o2750]))
            elif op == "xattr" and files:
                os.setxattr(rng.choice(files), "user.v", rng.randbytes(4))
            elif op == "mkdir":
                os.mkdir(os.path.join(rng.choice(dirs + [root]), f"dir{rng.randrange(10**6)}"))
            elif op == "symlink":
                os.symlink(f"t{rng.randrange(9)}",
                           os.path.join(rng.choice(dirs + [root]), f"sl{rng.randrange(10**6)}"))
            elif op == "rmtree" and dirs and rng.random() < 0.3:
                import shutil

                shutil.rmtree(rng.choice(dirs))
        except OSError:
            pass


def tree_manifest(root: str, hidden: tuple[str, ...] = ()) -> Manifest:
    """`shadowfs.manifest` without ctime (a restore cannot set it) and without hidden root names."""
    result = manifest(root, with_ctime=False)
    for name in hidden:
        prefix = os.path.join(".", name)
        for key in [k for k in result if k == prefix or k.startswith(prefix + "/")]:
            del result[key]
        if hidden and os.path.lexists(os.path.join(root, name)):
            fields = list(result["."])
            fields[7] -= 1  # nlink of the root: the hidden directory is not part of the tree
            result["."] = tuple(fields)
    return result
