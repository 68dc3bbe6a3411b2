"""A seeded random file-operation workload on a live mount, used by the
end-to-end tests: every kind of change the live mount must capture."""

from __future__ import annotations

import errno
import os
import random
import stat

from shadowfs.linux.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

OPS = ("create", "write", "overwrite", "append", "truncate_down", "truncate_up", "unlink",
       "unlink_open", "mkdir", "rmdir", "rename", "rename_over", "rename_dir", "rename_dir_over",
       "exchange", "exchange_dirs",
       "noreplace", "link", "symlink", "fifo", "chmod", "chown", "utime", "setxattr",
       "removexattr")
TOLERATED = {errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EINVAL, errno.ENOTDIR,
             errno.EISDIR, errno.ENODATA}


class Workload:
    """Random operations under one root; keeps its own list of names."""

    def __init__(self, root: str, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.counter = 0
        self.open_unlinked: list[int] = []

    def close(self) -> None:
        for fd in self.open_unlinked:
            os.close(fd)
        self.open_unlinked.clear()

    def _scan(self) -> tuple[list[str], list[str], list[str]]:
        files, dirs, others = [], [self.root], []
        for top, dnames, fnames in os.walk(self.root):
            for d in dnames:
                dirs.append(os.path.join(top, d))
            for f in fnames:
                path = os.path.join(top, f)
                mode = os.lstat(path).st_mode
                (files if stat.S_ISREG(mode) else others).append(path)
        return files, dirs, others

    def _fresh(self, parent: str) -> str:
        self.counter += 1
        odd = self.rng.choice(["", " sp", "-é", "'q'", "\\b", "ü" * 3])
        return os.path.join(parent, f"n{self.counter}{odd}")

    def step(self) -> str:
        files, dirs, others = self._scan()
        op = self.rng.choice(OPS)
        if not files and op not in ("create", "mkdir", "symlink", "fifo"):
            op = "create"
        try:
            self._apply(op, files, dirs, others)
        except OSError as exc:
            if exc.errno not in TOLERATED:
                raise
        # keep a few unlinked-but-open files alive for a while, writing to them
        if len(self.open_unlinked) > 3:
            os.close(self.open_unlinked.pop(0))
        return op

    def _data(self, limit: int = 200_000) -> bytes:
        return self.rng.randbytes(self.rng.randrange(0, limit))

    def _apply(self, op: str, files: list[str], dirs: list[str], others: list[str]) -> None:
        rng = self.rng
        if op == "create":
            with open(self._fresh(rng.choice(dirs)), "xb") as f:
                f.write(self._data())
        elif op in ("write", "overwrite"):
            path = rng.choice(files)
            size = os.path.getsize(path)
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, self._data(150_000) or b"x", rng.randrange(0, size + 1))
            finally:
                os.close(fd)
        elif op == "append":
            with open(rng.choice(files), "ab") as f:
                f.write(self._data(20_000))
        elif op == "truncate_down":
            path = rng.choice(files)
            os.truncate(path, rng.randrange(0, os.path.getsize(path) + 1))
        elif op == "truncate_up":
            path = rng.choice(files)
            os.truncate(path, os.path.getsize(path) + rng.randrange(1, 300_000))
        elif op == "unlink":
            os.unlink(rng.choice(files + others))
        elif op == "unlink_open":
            path = rng.choice(files)
            fd = os.open(path, os.O_RDWR)
            os.unlink(path)
            os.pwrite(fd, b"written after unlink", 0)
            self.open_unlinked.append(fd)
        elif op == "mkdir":
            os.mkdir(self._fresh(rng.choice(dirs)))
        elif op == "rmdir" and len(dirs) > 1:
            os.rmdir(rng.choice(dirs[1:]))
        elif op == "rename":
            os.rename(rng.choice(files + others), self._fresh(rng.choice(dirs)))
        elif op == "rename_over":
            os.rename(rng.choice(files + others), rng.choice(files))
        elif op == "rename_dir" and len(dirs) > 1:
            src = rng.choice(dirs[1:])
            parent = rng.choice(dirs)
            if parent != src and not parent.startswith(src + "/"):
                os.rename(src, self._fresh(parent))
        elif op in ("rename_dir_over", "exchange_dirs") and len(dirs) > 2:
            src, dst = rng.sample(dirs[1:], 2)
            if src.startswith(dst + "/") or dst.startswith(src + "/"):
                return
            if op == "rename_dir_over":
                os.rename(src, dst)  # ENOTEMPTY unless dst is empty
            else:
                renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), RENAME_EXCHANGE)
        elif op == "exchange" and len(files + others) > 1:
            a, b = rng.sample(files + others, 2)
            renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE)
        elif op == "noreplace":
            target = rng.choice(files) if rng.random() < 0.5 else self._fresh(rng.choice(dirs))
            renameat2(-100, os.fsencode(rng.choice(files)), -100, os.fsencode(target), RENAME_NOREPLACE)
        elif op == "link":
            os.link(rng.choice(files), self._fresh(rng.choice(dirs)))
        elif op == "symlink":
            os.symlink(f"target-{self.counter}", self._fresh(rng.choice(dirs)))
        elif op == "fifo":
            os.mkfifo(self._fresh(rng.choice(dirs)))
        elif op == "chmod":
            os.chmod(rng.choice(files + dirs[1:] or files), rng.choice([0o600, 0o644, 0o755, 0o700, 0o640]))
        elif op == "chown":
            os.lchown(rng.choice(files + others), rng.choice([0, 1000, 65534]), rng.choice([0, 100, 65534]))
        elif op == "utime":
            t = rng.randrange(10**9, 2 * 10**9) * 10**9 + rng.randrange(10**9)
            os.utime(rng.choice(files + dirs[1:] or files), ns=(t, t))
        elif op == "setxattr":
            os.setxattr(rng.choice(files + dirs[1:] or files), f"user.k{rng.randrange(3)}",
                        rng.randbytes(rng.randrange(1, 100)))
        elif op == "removexattr":
            os.removexattr(rng.choice(files + dirs[1:] or files), f"user.k{rng.randrange(3)}")
