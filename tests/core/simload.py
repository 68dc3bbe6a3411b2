"""A seeded random workload for `CoreSim` (no FUSE): every kind of change the capture engine handles,
on a plain backing directory, so diff areas can be made quickly for change-detection tests."""

from __future__ import annotations

import os
import random
import stat

from tests.support.coresim import CoreSim

BLOCK = 64 * 1024


class SimLoad:
    """Random operations through a CoreSim; keeps no state of its own but a name counter."""

    def __init__(self, sim: CoreSim, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.counter = 0

    def _scan(self) -> tuple[list[str], list[str], list[str]]:
        files, dirs, others = [], [""], []
        root = self.sim.backing
        for top, dnames, fnames in os.walk(root):
            rel_top = os.path.relpath(top, root)
            rel_top = "" if rel_top == "." else rel_top
            if rel_top == "" and ".shadowfs" in dnames:
                dnames.remove(".shadowfs")
            for d in dnames:
                dirs.append(os.path.join(rel_top, d))
            for f in fnames:
                rel = os.path.join(rel_top, f)
                mode = os.lstat(os.path.join(root, rel)).st_mode
                (files if stat.S_ISREG(mode) else others).append(rel)
        return sorted(files), sorted(dirs), sorted(others)

    def _fresh(self, dirs: list[str]) -> str:
        self.counter += 1
        odd = self.rng.choice(["", " sp", "-é", "\udcff"])
        return os.path.join(self.rng.choice(dirs), f"n{self.counter}{odd}")

    def _data(self, size: int) -> bytes:
        if self.rng.random() < 0.2:
            return bytes(size)
        return self.rng.randbytes(size)

    def populate(self, count: int) -> None:
        """Make `count` objects (mostly files with data) to change later."""
        for _ in range(count):
            _, dirs, _ = self._scan()
            if self.rng.random() < 0.2:
                self.sim.mkdir(self._fresh(dirs))
            else:
                size = self.rng.choice([0, 10, 5000, BLOCK, 3 * BLOCK + 7])
                self.sim.create(self._fresh(dirs), self._data(size))

    def step(self) -> str:
        files, dirs, others = self._scan()
        ops = ["create", "mkdir", "symlink", "fifo"]
        if files:
            ops += ["write", "write", "append", "truncate", "chmod", "utime", "xattr", "link", "unlink",
                    "rename", "rename"]
        if len(dirs) > 1:
            ops += ["rmdir", "rename_dir"]
        if others:
            ops += ["unlink_other", "chown_other"]
        op = self.rng.choice(ops)
        sim, rng = self.sim, self.rng
        path = lambda rel: os.path.join(sim.backing, rel)  # noqa: E731
        try:
            if op == "create":
                sim.create(self._fresh(dirs), self._data(rng.choice([0, 10, 5000, BLOCK, 3 * BLOCK + 7])))
            elif op == "mkdir":
                sim.mkdir(self._fresh(dirs))
            elif op == "symlink":
                sim.symlink(rng.choice(["x", "../y", "/etc/passwd"]), self._fresh(dirs))
            elif op == "fifo":
                sim.mkfifo(self._fresh(dirs))
            elif op == "write":
                f = rng.choice(files)
                size = os.path.getsize(path(f))
                offset = rng.randrange(0, size + 2 * BLOCK)
                sim.write(f, offset, self._data(rng.choice([1, 100, BLOCK, 2 * BLOCK + 3])))
            elif op == "append":
                f = rng.choice(files)
                sim.write(f, os.path.getsize(path(f)), self._data(rng.choice([1, 3000, BLOCK])))
            elif op == "truncate":
                f = rng.choice(files)
                sim.truncate(f, rng.randrange(0, 4 * BLOCK))
            elif op == "chmod":
                sim.attr_change(rng.choice(files), lambda p: os.chmod(p, rng.choice([0o600, 0o644, 0o755])))
            elif op == "utime":
                sim.attr_change(rng.choice(files + dirs[1:] or files),
                                lambda p: os.utime(p, ns=(rng.randrange(10**18), rng.randrange(10**18))))
            elif op == "xattr":
                sim.attr_change(rng.choice(files), lambda p: os.setxattr(p, "user.k", rng.randbytes(5)))
            elif op == "chown_other":
                sim.attr_change(rng.choice(others),
                                lambda p: os.chown(p, rng.randrange(5), rng.randrange(5),
                                                   follow_symlinks=False))
            elif op == "link":
                sim.link(rng.choice(files), self._fresh(dirs))
            elif op == "unlink":
                sim.unlink(rng.choice(files))
            elif op == "unlink_other":
                sim.unlink(rng.choice(others))
            elif op == "rmdir":
                empty = [d for d in dirs[1:] if not os.listdir(path(d))]
                if empty:
                    sim.rmdir(rng.choice(empty))
            elif op == "rename":
                src = rng.choice(files + others)
                dst = rng.choice(files) if rng.random() < 0.3 else self._fresh(dirs)
                if src != dst:
                    sim.rename(src, dst)
            elif op == "rename_dir":
                src = rng.choice(dirs[1:])
                parent = rng.choice([d for d in dirs if d != src and not d.startswith(src + "/")])
                self.counter += 1
                sim.rename(src, os.path.join(parent, f"m{self.counter}"))
        except OSError:
            return op + "!"
        return op
