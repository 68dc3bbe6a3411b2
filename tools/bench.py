"""shadowfs benchmark: the same work on native ext4, on a live mount and from the
snapshot browser, measured side by side in one run. Run through `tools/bench`.
Each row names the filesystem it ran on (`fs`); the `xfs` section runs on an XFS
image it makes (tools/bench_xfs.py).

Every figure is the median of several runs; ratios are shadowfs / native
throughput (or native / shadowfs time), so 1.0 means "as fast as native".
Cold-cache reads drop the page cache first (root only). Snapshot creation is
timed at the daemon socket, without the CLI's process start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shadowfs.ipc.client import request  # noqa: E402
from shadowfs.linux import fshandles, mounts  # noqa: E402
from tools import bench_xfs  # noqa: E402

MiB = 1 << 20
SHADOWFS = [sys.executable, "-m", "shadowfs"]


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.big = (256 if quick else 1024) * MiB
        self.rand_file = 64 * MiB if quick else 256 * MiB
        self.rand_writes = 2000 if quick else 8192
        self.rand_reads = 20000 if quick else 100000
        self.meta_files = 4000 if quick else 20000
        self.tree_files = 4000 if quick else 20000
        self.stat_files = 4000 if quick else 20000
        self.tree_bytes = (128 if quick else 1024) * MiB
        self.snap_small = 1000
        self.snap_large = 20000 if quick else 100000
        self.flat_snapshots = 100 if quick else 500
        self.flat_file = 32 * MiB if quick else 128 * MiB
        self.memory_files = (1000, 20000) if quick else (1000, 100000, 1000000)
        self.runs = 3


TARGETS: dict[str, tuple[str, float, str]] = {
    # key: (which figure, bound, ">=" or "<=")
    "snapshot_create": ("large", 10.0, "<="),
    "browser_seq_read": ("ratio", 0.8, ">="),
    "browser_seq_read_captured": ("ratio", 0.5, ">="),
    "live_seq_write": ("ratio", 0.8, ">="),
    "first_overwrite": ("ratio", 1.5, "<="),
    "first_overwrite_xfs": ("ratio", 1.3, "<="),
    "live_rand_write_first": ("ratio", 0.5, ">="),
    "live_metadata": ("ratio", 0.13, ">="),
    "browser_rsync": ("ratio", 0.6, ">="),  # issue #12's step; the longer-term goal stays 0.8
    "browser_rand_read_hot": ("ratio", 0.5, ">="),
    "browser_stat": ("ratio", 0.5, ">="),
    "flat_in_snapshots": ("ratio", 0.9, ">="),
    "memory": ("peak_mib", 150.0, "<="),
    "diff_area_space": ("overhead", 0.10, "<="),
    "backup_incremental": ("full_ratio", 10.0, ">="),
}
SECTIONS = ("sequential", "random", "metadata", "rsync", "stat", "flat", "snapshot", "memory", "backup",
            "xfs")
EXTRA_TARGETS: dict[str, list[tuple[str, float, str]]] = {
    "snapshot_create": [("ratio", 1.5, "<="), ("held_ms", 5.0, "<=")],
    "first_overwrite": [("second_vs_live", 0.9, ">=")],
    "flat_in_snapshots": [("read_ratio", 0.9, ">=")],
    "memory": [("growth", 1.2, "<=")],
    "backup_incremental": [("rsync_ratio", 3.0, ">=")],
}


def judge(key: str, row: dict[str, Any]) -> None:
    """Add the target and whether it is met to a result row."""
    checks = [TARGETS[key], *EXTRA_TARGETS.get(key, [])] if key in TARGETS else []
    met = True
    targets = []
    for figure, bound, way in checks:
        value = row.get(figure)
        ok = value is not None and (value >= bound if way == ">=" else value <= bound)
        met = met and ok
        targets.append(f"{figure} {way} {bound:g}")
    if checks:
        row["target"] = "; ".join(targets)
        row["met"] = met


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def median_time(work: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        times.append(timed(work))
    return statistics.median(times)


def paired_medians(works: dict[str, Callable[[], Any]], runs: int,
                   before: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median times of several works run in turns (a, b, c, a, b, c, ...), so that a
    drift of the machine (this VM's disk varies a lot) weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(runs):
        for name, work in works.items():
            if before is not None:
                before()
            times[name].append(timed(work))
    return {name: statistics.median(values) for name, values in times.items()}


def write_file(path: Path, size: int, chunk: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(0, size, len(chunk)):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def overwrite_file(path: Path, size: int, chunk: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, len(chunk)):
            os.pwrite(fd, chunk, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, MiB):
            pass
    finally:
        os.close(fd)


def random_writes(path: Path, size: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    block = b"r" * 4096
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(count):
            os.pwrite(fd, block, rng.randrange(size // 4096) * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)


def metadata(root: Path, count: int) -> None:
    root.mkdir()
    for i in range(count):
        fd = os.open(root / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    for i in range(count):
        os.stat(root / f"f{i}")
    for i in range(count):
        os.unlink(root / f"f{i}")
    root.rmdir()


def make_tree(root: Path, files: int, total: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    each = total // files
    payload = rng.randbytes(each * 2)
    for i in range(files):
        d = root / f"d{i // 500}" / f"e{(i // 50) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        start = rng.randrange(each)
        (d / f"f{i}").write_bytes(payload[start:start + rng.randrange(each // 2, each * 3 // 2)])


def many_files(root: Path, count: int) -> None:
    for i in range(count):
        d = root / f"d{i // 1000}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"x")


class BackupWorker:
    """A process that runs `run_backup` calls on request and times them (its imports done once)."""

    PROGRAM = """
import json, sys, time
from shadowfs import media
from shadowfs.backup.job import run_backup
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    start = time.perf_counter()
    out = run_backup(job["state"], job["media"], [job["volume"]], job["type"], base_id=job["base"],
                     keep_snapshot=True)
    seconds = time.perf_counter() - start
    files = media.open_image(job["media"], out.image).summary()["files"]
    print(json.dumps({"seconds": seconds, "image": out.image, "set_id": out.set_id, "files": files,
                      "fast_path": out.fast_path}), flush=True)
"""

    def __init__(self, env: dict[str, str], state: str) -> None:
        self.state = state
        self.proc = subprocess.Popen([sys.executable, "-c", self.PROGRAM], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the backup worker did not start")

    def backup(self, media: str, volume: str, backup_type: str, base: str | None = None
               ) -> tuple[float, dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"state": self.state, "media": media, "volume": volume, "type": backup_type, "base": base}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the backup worker failed a {backup_type} backup")
        result = json.loads(line)
        return result["seconds"], result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Bench:
    def __init__(self, work: Path, sizes: Sizes, only: set[str] | None = None) -> None:
        self.work = work
        self.sizes = sizes
        self.only = only
        self.state = work / "state"
        self.env = {**os.environ, "SHADOWFS_STATE": str(self.state),
                    "SHADOWFS_MOUNT_ROOT": str(work / "mnt")}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.results: dict[str, dict[str, Any]] = {}
        self.peak_rss: dict[str, int] = {}

    # ---- daemon ----------------------------------------------------------

    def cli(self, *args: str) -> Any:
        result = subprocess.run(SHADOWFS + list(args), env=self.env, capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise SystemExit(f"bench: shadowfs {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout) if "--json" in args else None

    def start(self) -> None:
        log = open(self.work / "daemon.log", "ab")  # noqa: SIM115
        self.daemon = subprocess.Popen(SHADOWFS + ["daemon"], env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(600):
            try:
                request(str(self.state), {"op": "status"})
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit("bench: daemon did not start")

    def stop(self) -> None:
        if self.daemon is not None:
            self.sample_rss()
            # mount processes outlive a daemon that merely stops: unprotect too
            subprocess.run(SHADOWFS + ["stop", "--unprotect"], env=self.env, capture_output=True,
                           check=False)
            try:
                self.daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        base = str(self.work)
        for point in sorted(mounts.fuse_mounts(), key=len, reverse=True):
            if point.startswith(base + "/"):
                mounts.unmount(point)

    def add_volume(self, name: str, backing: Path) -> None:
        self.cli("volume", "add", name, str(backing))
        deadline = time.monotonic() + 60
        while not mounts.is_fuse_mount(str(backing)):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: volume {name} did not mount")
            time.sleep(0.05)

    def snapshot(self, *volumes: str) -> dict[str, Any]:
        return request(str(self.state), {"op": "snapshot_create", "volumes": list(volumes)})

    def sample_rss(self) -> None:
        status = request(str(self.state), {"op": "status"})
        pids = {"daemon": status["pid"], "browser": (status.get("browser") or {}).get("pid")}
        for volume in status["volumes"]:
            pids[f"mount:{volume['name']}"] = (volume.get("process") or {}).get("pid")
        for label, pid in pids.items():
            if not pid:
                continue
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    kib = int(line.split()[1])
                    self.peak_rss[label] = max(self.peak_rss.get(label, 0), kib * 1024)

    # ---- recording -------------------------------------------------------

    def record(self, key: str, title: str, unit: str, fs: str | None = None, **figures: float) -> None:
        """`fs`: the filesystem the figure ran on (default: the work directory's)."""
        if fs is None:
            fd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fs = fshandles.fs_name(fd)
            finally:
                os.close(fd)
        row: dict[str, Any] = {"title": title, "unit": unit, "fs": fs,
                               **{k: round(v, 4) for k, v in figures.items()}}
        judge(key, row)
        self.results[key] = row

    def diff_area_file_bytes(self, volume: str) -> int:
        """Bytes the volume's diff area takes on disk: the LMDB file and blocks.dat."""
        area = self.state / "volumes" / volume / "diffarea"
        return sum(os.stat(area / name).st_blocks * 512 for name in ("data.mdb", "blocks.dat")
                   if (area / name).exists())

    def volume_info(self, volume: str) -> dict[str, Any]:
        return next(v for v in request(str(self.state), {"op": "volume_list"})["volumes"]
                    if v["name"] == volume)

    # ---- the work --------------------------------------------------------

    def run(self) -> None:
        native = self.work / "native"
        live = self.work / "vol"
        native.mkdir()
        live.mkdir()
        self.start()
        self.add_volume("bench", live)
        sections: dict[str, Callable[[], None]] = {
            "sequential": lambda: self.sequential(native, live),
            "random": lambda: self.random_io(native, live),
            "metadata": lambda: self.metadata(native, live),
            "rsync": lambda: self.rsync(native, live),
            "stat": lambda: self.stat_paths(native, live),
            "flat": self.flat,
            "snapshot": self.snapshot_creation,
            "memory": self.memory,
            "backup": self.backup_jobs,
            "xfs": lambda: bench_xfs.first_overwrite_xfs(self, write_file, overwrite_file),
        }
        for name, section in sections.items():
            if self.only is None or name in self.only:
                section()

    def sequential(self, native: Path, live: Path) -> None:
        s = self.sizes
        chunk, other = os.urandom(MiB), os.urandom(MiB)
        mb = s.big / MiB
        t = paired_medians({"native": lambda: write_file(native / "big", s.big, chunk),
                            "live": lambda: write_file(live / "big", s.big, chunk)}, s.runs)
        t_native, t_live = t["native"], t["live"]
        self.record("live_seq_write", f"sequential write {mb:.0f} MiB + fsync", "MiB/s",
                    native=mb / t_native, live=mb / t_live, ratio=t_native / t_live)

        snap = self.snapshot("bench")
        browser_big = Path(snap["snapshots"][0]["path"]) / "big"
        t = paired_medians({"native": lambda: read_file(native / "big"),
                            "live": lambda: read_file(live / "big"),
                            "browser": lambda: read_file(browser_big)}, s.runs, drop_caches)
        t_native, t_live, t_browser = t["native"], t["live"], t["browser"]
        self.record("browser_seq_read", f"sequential read {mb:.0f} MiB unchanged since the snapshot, "
                    "cold cache", "MiB/s", native=mb / t_native, live=mb / t_live,
                    browser=mb / t_browser, ratio=t_native / t_browser, live_ratio=t_native / t_live)

        times: dict[str, list[float]] = {"native": [], "first": [], "second": [], "live_plain": []}
        for run in range(s.runs):  # each first overwrite right after a snapshot of its own
            if run:
                self.cli("snapshot", "delete", snap["set_id"])
                snap = self.snapshot("bench")
            before = self.diff_area_file_bytes("bench")
            times["native"].append(timed(lambda: overwrite_file(native / "big", s.big, other)))
            times["first"].append(timed(lambda: overwrite_file(live / "big", s.big, other)))
            times["second"].append(timed(lambda: overwrite_file(live / "big", s.big, chunk)))
            write_file(live / "plain", s.big, other)
            times["live_plain"].append(timed(lambda: overwrite_file(live / "plain", s.big, chunk)))
            if not run:
                captured = self.volume_info("bench")["diff_area_bytes"]
                grown = self.diff_area_file_bytes("bench") - before
        t = {name: statistics.median(values) for name, values in times.items()}
        self.record("first_overwrite", f"overwrite {mb:.0f} MiB + fsync: first after a snapshot "
                    "(durable pre-images) vs second", "s", native=t["native"], first=t["first"],
                    second=t["second"], live_plain=t["live_plain"], ratio=t["first"] / t["second"],
                    second_vs_live=t["live_plain"] / t["second"])
        self.record("diff_area_space", f"diff area file growth for {mb:.0f} MiB captured", "bytes",
                    captured=captured, file_growth=grown, overhead=grown / max(captured, 1) - 1)
        browser_big = Path(snap["snapshots"][0]["path"]) / "big"

        t = paired_medians({"native": lambda: read_file(native / "big"),
                            "browser": lambda: read_file(browser_big)}, s.runs, drop_caches)
        t_native, t_browser = t["native"], t["browser"]
        self.record("browser_seq_read_captured", f"snapshot read of {mb:.0f} MiB overwritten since "
                    "(every block from the diff area), cold", "MiB/s",
                    native=mb / t_native, browser=mb / t_browser, ratio=t_native / t_browser)
        self.cli("snapshot", "delete", snap["set_id"])
        for path in (native / "big", live / "big", live / "plain"):
            os.unlink(path)

    def random_io(self, native: Path, live: Path) -> None:
        s = self.sizes
        chunk = os.urandom(MiB)
        write_file(native / "rand", s.rand_file, chunk)
        write_file(live / "rand", s.rand_file, chunk)
        t_native = median_time(lambda: random_writes(native / "rand", s.rand_file, s.rand_writes, 1), s.runs)
        t_live = median_time(lambda: random_writes(live / "rand", s.rand_file, s.rand_writes, 1), s.runs)
        captures = []
        snap: dict[str, Any] = {}
        for run in range(s.runs):  # each run right after a snapshot of its own
            if snap:
                self.cli("snapshot", "delete", snap["set_id"])
            snap = self.snapshot("bench")
            captures.append(timed(lambda seed=2 + run: random_writes(live / "rand", s.rand_file,
                                                                     s.rand_writes, seed)))
        t_capture = statistics.median(captures)
        self.record("live_rand_write", f"{s.rand_writes} random 4 KiB writes + fsync", "writes/s",
                    native=s.rand_writes / t_native, live=s.rand_writes / t_live,
                    live_first_after_snapshot=s.rand_writes / t_capture, ratio=t_native / t_live)
        self.record("live_rand_write_first", f"{s.rand_writes} random 4 KiB writes + fsync right after a "
                    "snapshot (durable pre-images) vs the same on the live mount without one", "writes/s",
                    live=s.rand_writes / t_live, first_after_snapshot=s.rand_writes / t_capture,
                    ratio=t_live / t_capture)
        browser_rand = Path(snap["snapshots"][0]["path"]) / "rand"
        read_file(native / "rand")
        read_file(browser_rand)  # hot: the kernel may keep what cannot change
        t_native = median_time(lambda: random_reads(native / "rand", s.rand_file, s.rand_reads), s.runs)
        t_browser = median_time(lambda: random_reads(browser_rand, s.rand_file, s.rand_reads), s.runs)
        self.record("browser_rand_read_hot", f"{s.rand_reads} random 4 KiB reads, hot cache", "reads/s",
                    native=s.rand_reads / t_native, browser=s.rand_reads / t_browser,
                    ratio=t_native / t_browser)
        self.cli("snapshot", "delete", snap["set_id"])
        os.unlink(native / "rand")
        os.unlink(live / "rand")

    def metadata(self, native: Path, live: Path) -> None:
        n = self.sizes.meta_files
        t = paired_medians({"native": lambda: metadata(native / "meta", n),
                            "live": lambda: metadata(live / "meta", n)}, self.sizes.runs)
        t_native, t_live = t["native"], t["live"]
        self.record("live_metadata", f"create + stat + unlink of {n} files", "files/s",
                    native=n / t_native, live=n / t_live, ratio=t_native / t_live)

    def rsync(self, native: Path, live: Path) -> None:
        s = self.sizes
        make_tree(native / "tree", s.tree_files, s.tree_bytes)
        make_tree(live / "tree", s.tree_files, s.tree_bytes)
        snap = self.snapshot("bench")
        browser_tree = Path(snap["snapshots"][0]["path"]) / "tree"
        out = self.work / "out"

        def rsync(src: Path) -> Callable[[], None]:
            def go() -> None:
                subprocess.run(["rsync", "-a", f"{src}/", f"{out}/"], check=True)
            return go

        def cold() -> None:
            shutil.rmtree(out, ignore_errors=True)
            drop_caches()

        tb = s.tree_bytes / MiB
        t = paired_medians({"native": rsync(native / "tree"), "browser": rsync(browser_tree)}, s.runs, cold)
        t_native, t_browser = t["native"], t["browser"]
        self.record("browser_rsync", f"rsync -a of {s.tree_files} files / {tb:.0f} MiB out of the "
                    "snapshot, cold", "MiB/s", native=tb / t_native, browser=tb / t_browser,
                    ratio=t_native / t_browser)
        shutil.rmtree(out, ignore_errors=True)
        self.cli("snapshot", "delete", snap["set_id"])
        shutil.rmtree(native / "tree")
        shutil.rmtree(live / "tree")

    def stat_paths(self, native: Path, live: Path) -> None:
        """lstat of every path of a snapshot's tree by absolute path, dentries cold, vs native."""
        n = self.sizes.stat_files
        make_tree(native / "stat", n, n * 64)
        make_tree(live / "stat", n, n * 64)
        snap = self.snapshot("bench")
        browser_tree = Path(snap["snapshots"][0]["path"]) / "stat"
        relative = [os.path.relpath(os.path.join(top, name), native / "stat")
                    for top, dirs, files in os.walk(native / "stat") for name in dirs + files]

        def lstat_all(root: Path) -> Callable[[], None]:
            paths = [os.path.join(root, path) for path in relative]  # absolute: every walk from /

            def go() -> None:
                for path in paths:
                    os.lstat(path)
            return go

        t = paired_medians({"native": lstat_all(native / "stat"), "browser": lstat_all(browser_tree)},
                           self.sizes.runs, drop_caches)
        t_native, t_browser = t["native"], t["browser"]
        count = len(relative)
        self.record("browser_stat", f"lstat of every path ({count}) of a snapshot by absolute path, "
                    "cold dentries", "paths/s", native=count / t_native, browser=count / t_browser,
                    ratio=t_native / t_browser)
        self.cli("snapshot", "delete", snap["set_id"])
        shutil.rmtree(native / "stat")
        shutil.rmtree(live / "stat")

    def flat(self) -> None:
        """Overwrite and snapshot-read throughput on a volume with 1 snapshot vs one with many,
        measured in turns (one, many, one, many, ...) so that the disk's swings weigh on both."""
        s = self.sizes
        chunk = os.urandom(MiB)
        mb = s.flat_file / MiB
        trees = {"one": self.work / "flat-one", "many": self.work / "flat-many"}
        for name, tree in trees.items():
            tree.mkdir()
            self.add_volume(f"flat-{name}", tree)
        for _ in range(s.flat_snapshots - 1):
            self.snapshot("flat-many")

        def delete_sets(volume: str) -> None:
            for record in request(str(self.state), {"op": "snapshot_list"})["snapshots"]:
                if record["volume"] == volume:
                    request(str(self.state), {"op": "snapshot_delete", "snapshot": record["id"]})

        # each overwrite is the first after a snapshot of its own (the capture path): every run
        # writes the file anew and takes a snapshot first ("one" keeps only that snapshot)
        overwrites: dict[str, list[float]] = {"one": [], "many": []}
        paths: dict[str, Path] = {}
        for _ in range(s.runs):
            for name, tree in trees.items():
                write_file(tree / "flat", s.flat_file, chunk)
                if name == "one":
                    delete_sets("flat-one")
                snap = self.snapshot(f"flat-{name}")
                paths[name] = Path(snap["snapshots"][0]["path"]) / "flat"
                overwrites[name].append(timed(lambda tree=tree: overwrite_file(
                    tree / "flat", s.flat_file, os.urandom(MiB))))
        reads = paired_medians({name: lambda path=path: read_file(path) for name, path in paths.items()},
                               s.runs, drop_caches)
        over_one, over_many = (mb / statistics.median(overwrites[n]) for n in ("one", "many"))
        read_one, read_many = mb / reads["one"], mb / reads["many"]
        self.record("flat_in_snapshots", f"overwrite and snapshot read of {mb:.0f} MiB, 1 vs "
                    f"{s.flat_snapshots} snapshots on the volume, in turns", "MiB/s", overwrite_1=over_one,
                    overwrite_many=over_many, read_1=read_one, read_many=read_many,
                    ratio=over_many / over_one, read_ratio=read_many / read_one)
        self.sample_rss()
        for name, tree in trees.items():
            delete_sets(f"flat-{name}")
            os.unlink(tree / "flat")

    def snapshot_creation(self) -> None:
        s = self.sizes
        small, large = self.work / "small", self.work / "large"
        many_files(small, s.snap_small)
        many_files(large, s.snap_large)
        self.add_volume("small", small)
        self.add_volume("large", large)
        times: dict[str, list[float]] = {"small": [], "large": []}
        held: list[float] = []  # how long each mount process held writes, as it measured
        for _ in range(7):
            for name in ("small", "large"):
                start = time.perf_counter()
                reply = self.snapshot(name)
                times[name].append((time.perf_counter() - start) * 1000)
                held.append(float(reply["held_ms"][name]))
        small_ms, large_ms = statistics.median(times["small"]), statistics.median(times["large"])
        self.record("snapshot_create", f"snapshot creation with {s.snap_small} vs {s.snap_large} "
                    "files, at the daemon socket; writes held (median)", "ms", small=small_ms,
                    large=large_ms, ratio=large_ms / small_ms, held_ms=statistics.median(held),
                    held_max_ms=max(held))

    def backup_jobs(self) -> None:
        """Issue 5's incremental: full backup, change 1% of the files, incremental backup, and rsync
        of the incremental's snapshot onto a copy of the full's; each from a cold cache. Backups run
        as `shadowfs.backupjob.run_backup` calls in a worker process (the library a backup service
        uses), and the incremental also through the CLI, whose Python start-up is counted apart."""
        s = self.sizes
        tree = self.work / "bvol"
        tree.mkdir()
        make_tree(tree, s.tree_files, s.tree_bytes, seed=5)
        self.add_volume("backup", tree)
        media, copy = self.work / "media", self.work / "copy"
        files = sorted(p for p in tree.rglob("f*") if p.is_file())
        rng = random.Random(5)
        times: dict[str, list[float]] = {"full": [], "incremental": [], "incremental_cli": [], "rsync": []}
        changed_files = 0
        worker = BackupWorker(self.env, str(self.state))
        try:
            for _ in range(s.runs):
                shutil.rmtree(media, ignore_errors=True)
                shutil.rmtree(copy, ignore_errors=True)
                drop_caches()
                seconds, full = worker.backup(str(media), "backup", "full")
                times["full"].append(seconds)
                subprocess.run(["rsync", "-a", f"{self.set_path(full['set_id'], 'backup')}/", f"{copy}/"],
                               check=True)
                changed = rng.sample(files, max(1, len(files) // 100))
                for path in changed:
                    with open(path, "r+b") as f:
                        f.seek(rng.randrange(max(1, path.stat().st_size)))
                        f.write(rng.randbytes(100))
                changed_files = len(changed)
                drop_caches()
                start = time.perf_counter()
                by_cli = self.cli("backup", "--media", str(media), "--type", "incremental", "--base",
                                  full["image"], "backup", "--keep-snapshot", "--json")
                times["incremental_cli"].append(time.perf_counter() - start)
                drop_caches()
                seconds, inc = worker.backup(str(media), "backup", "incremental", base=full["image"])
                times["incremental"].append(seconds)
                for result in (by_cli, inc):
                    if result["files"] < changed_files or not result["fast_path"]:
                        raise SystemExit(f"bench: an incremental saved {result['files']} files for "
                                         f"{changed_files} changed (fast path {result['fast_path']})")
                drop_caches()
                snap = self.set_path(inc["set_id"], "backup")
                times["rsync"].append(timed(lambda snap=snap: subprocess.run(
                    ["rsync", "-a", f"{snap}/", f"{copy}/"], check=True)))
                for set_id in (full["set_id"], by_cli["set_id"], inc["set_id"]):
                    self.cli("snapshot", "delete", set_id)
        finally:
            worker.close()
        t = {name: statistics.median(values) for name, values in times.items()}
        self.record("backup_incremental", f"backup of {s.tree_files} files / {s.tree_bytes // MiB} MiB: "
                    f"incremental after changing {changed_files} files vs full and vs rsync -a onto "
                    "the previous copy, cold (library calls; _cli: through the CLI)", "s",
                    full=t["full"], incremental=t["incremental"], incremental_cli=t["incremental_cli"],
                    rsync=t["rsync"], full_ratio=t["full"] / t["incremental"],
                    rsync_ratio=t["rsync"] / t["incremental"],
                    full_ratio_cli=t["full"] / t["incremental_cli"],
                    rsync_ratio_cli=t["rsync"] / t["incremental_cli"])
        shutil.rmtree(media, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)

    def set_path(self, set_id: str, volume: str) -> Path:
        return self.work / "mnt" / "snapshots" / set_id / volume

    def memory(self) -> None:
        """Peak RSS of every process, and the mount's and browser's after walking n files."""
        walked: dict[int, int] = {}
        for count in self.sizes.memory_files:
            name = f"mem{count}"
            tree = self.work / name
            many_files(tree, count)
            self.add_volume(name, tree)
            snap = self.snapshot(name)
            for root in (tree, Path(snap["snapshots"][0]["path"])):
                for _top, _dirs, files in os.walk(root):
                    for f in files:
                        os.lstat(os.path.join(_top, f))
            self.sample_rss()
            status = request(str(self.state), {"op": "status"})
            pids = [v["process"]["pid"] for v in status["volumes"] if v["name"] == name]
            pids.append(status["browser"]["pid"])
            walked[count] = max(rss_of(pid) for pid in pids if pid)
        peak = max(self.peak_rss.values())
        counts = sorted(walked)
        self.record("memory", "peak RSS of any shadowfs process; RSS after walking "
                    + " vs ".join(f"{c}" for c in counts) + " files", "MiB",
                    peak_mib=peak / MiB, **{f"peak_{k}": v / MiB for k, v in self.peak_rss.items()},
                    **{f"walk_{c}": walked[c] / MiB for c in counts},
                    growth=walked[counts[-1]] / walked[counts[0]])


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def random_reads(path: Path, size: int, count: int) -> None:
    rng = random.Random(3)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            os.pread(fd, 4096, rng.randrange(size // 4096) * 4096)
    finally:
        os.close(fd)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    for key, row in results.items():
        figures = ", ".join(f"{k} {v:g}" for k, v in row.items()
                            if k not in ("title", "unit", "target", "met", "fs"))
        verdict = f"  target {row['target']}: {'met' if row['met'] else 'NOT MET'}" if "target" in row else ""
        print(f"{key:26} {row['title']} (on {row['fs']})\n"
              f"{'':26} [{row['unit']}] {figures}\n{'':26}{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a run of a few minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated sections to run ({', '.join(SECTIONS)}); all by default")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it mounts FUSE and drops the page cache)")
    work = Path(tempfile.mkdtemp(prefix="shadowfs-bench-", dir="/var/tmp"))
    only = set(args.only.split(",")) if args.only else None
    if only is not None and only - set(SECTIONS):
        raise SystemExit(f"bench: unknown section(s) {', '.join(sorted(only - set(SECTIONS)))}; "
                         f"known: {', '.join(SECTIONS)}")
    bench = Bench(work, Sizes(args.quick), only)
    try:
        bench.run()
    except BaseException:
        kept = Path(f"{work}-daemon.log")  # the daemon's side of a failed run
        with contextlib.suppress(OSError):
            shutil.copyfile(work / "daemon.log", kept)
            print(f"bench: the daemon's log of this run is kept in {kept}", file=sys.stderr)
        raise
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(bench.results, indent=2))
    else:
        print_table(bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
