"""Backup jobs with a real writer process and a real daemon, through `shadowfs backup` / `restore`.

Each restored tree is compared byte for byte with an independent model (plain
dicts of path -> bytes built here from what the test wrote): exclusions win,
alternate locations, backup-type and snapshot-required masks, differenced files
(explicit and zero time), partial files (range strings and ranges files),
directed targets, new targets, additional restores; bad ranges are refused
before anything reaches the media or the target.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonRun
from tests.support.writers import ROOT, WriterProcs, writer_procs

pytestmark = pytest.mark.fuse
BACKUP_CLI = [sys.executable, "-m", "shadowfs"]
LOG_ONLY = 0x8 | 0xF00          # LOG_BACKUP_REQUIRED | ALL_SNAPSHOT_REQUIRED
NO_SNAPSHOT = 0xF               # ALL_BACKUP_REQUIRED, no snapshot needed
SCHEMA = 0x1 | 0x2 | 0x20 | 0x40 | 0x100   # differential, incremental, timestamped, last modify, new target


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)


def cli(daemon: DaemonRun, *args: str, check: bool = True) -> Any:
    result = subprocess.run(BACKUP_CLI + list(args), env=daemon.env, capture_output=True, text=True,
                            timeout=300, check=False, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout) if "--json" in args else result
    return result


def start_writer(daemon: DaemonRun, writers: WriterProcs, config: dict[str, Any]) -> Path:
    path = daemon.base / "writer.json"
    path.write_text(json.dumps(config))
    log = daemon.base / "spec-events.jsonl"
    writers._start("spec", [sys.executable, "-m", "tests.support.writers.spec_writer",
                            "--state", str(daemon.state), "--config", str(path), "--log", str(log)])
    writers.wait_registered("spec")
    return path


def tree_files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = Path(dirpath, name)
            out[str(full.relative_to(root))] = full.read_bytes()
    return out


def with_ranges(size: int, content: bytes, ranges: list[tuple[int, int]], base: bytes | None = None) -> bytes:
    """The model of a partial restore: `base` (or zeros) with `ranges` of `content` written in."""
    out = bytearray(base if base is not None else bytes(size))
    if len(out) < size:
        out.extend(bytes(size - len(out)))
    for offset, length in ranges:
        out[offset:offset + length] = content[offset:offset + length]
    return bytes(out)


def ranges_file(ranges: list[tuple[int, int]], count: int | None = None) -> bytes:
    data = struct.pack("<Q", len(ranges) if count is None else count)
    for offset, length in ranges:
        data += struct.pack("<QQ", offset, length)
    return data


def write(path: Path, data: bytes, mtime: float | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


def test_writer_rules_backup_and_restore(daemon: DaemonRun, writers: WriterProcs, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b")
    daemon.wait_ready()
    now = time.time()
    files: dict[str, bytes] = {}
    files["db/data.bin"] = write(a / "db/data.bin", os.urandom(70_000))
    files["db/sub/deep.bin"] = write(a / "db/sub/deep.bin", b"deep" * 100)
    write(a / "db/x.tmp", b"excluded everywhere")
    write(a / "db/sub/y.tmp", b"excluded too")
    write(a / "outside/z.tmp", b"excluded outside components as well")
    alt = write(a / "alt/one.bin", b"the usable copy" * 50)
    write(a / "real/one.bin", b"the unusable live copy")
    write(a / "logs/a.log", b"log only")
    old = write(a / "diff/old.dat", b"old dat", now - 5000)
    files["diff/new.dat"] = write(a / "diff/new.dat", b"new dat")
    files["diff/f1.txt"] = write(a / "diff/f1.txt", b"f1", now - 5000)
    files["diff/f2.txt"] = write(a / "diff/f2.txt", b"f2")
    p_bin = write(a / "part/p.bin", os.urandom(4096))
    q_bin = write(a / "part/q.bin", os.urandom(8192))
    q_ranges = [(4000, 100), (0, 16)]
    files["part/q.ranges"] = write(a / "part/q.ranges", ranges_file(q_ranges))
    files["outside.txt"] = write(a / "outside.txt", b"crash-consistent data")
    files["real/one.bin"] = alt
    files["diff/old.dat"] = old
    files["part/p.bin"] = with_ranges(4096, p_bin, [(0, 10), (100, 5)])
    files["part/q.bin"] = with_ranges(8192, q_bin, q_ranges)
    b_files = {"wal/1.wal": write(b / "wal/1.wal", b"wal one"), "b.txt": write(b / "b.txt", b"outside on b")}

    config = {
        "schema": SCHEMA,
        "components": [{"name": "main", "files": [
            {"path": f"{a}/db", "filespec": "*", "recursive": True},
            {"path": f"{a}/real", "filespec": "*.bin", "alternate_path": f"{a}/alt"},
            {"path": f"{a}/logs", "filespec": "*.log", "mask": LOG_ONLY},
            {"path": f"{a}/diff", "filespec": "*.dat"},
            {"path": f"{a}/part", "filespec": "*.ranges"},
        ]}, {"name": "wal", "files": [{"path": f"{b}/wal", "filespec": "*.wal", "mask": NO_SNAPSHOT}]}],
        "excluded": [{"path": str(a), "filespec": "*.tmp", "recursive": True}],
        "post_snapshot": {"main": {
            "differenced": [[f"{a}/diff", "*.dat", False, 0],
                            [f"{a}/diff", "*.txt", False, int((now - 1000) * 1e9)]],
            "partial": [[f"{a}/part", "p.bin", "0:10,100:5"],
                        [f"{a}/part", "q.bin", f"file={a}/part/q.ranges"]]}},
    }
    start_writer(daemon, writers, config)
    store = str(tmp_path / "media")
    full = cli(daemon, "backup", "--media", store, "--type", "full", "a", "b", "--json")
    assert full["live_volumes"] == ["b"]
    assert {c["component"]: c["succeeded"] for c in full["components"]} == {"main": True, "wal": True}
    out = tmp_path / "out-full"
    cli(daemon, "restore", "--media", store, "--image", full["image"], "--to", str(out), "--json")
    assert tree_files(out / "a") == files
    assert tree_files(out / "b") == b_files

    # incremental: differenced files by mtime (zero time = the full backup's snapshot time), partial again
    time.sleep(1.1)  # the BCD's creation time has one-second resolution
    later = time.time()
    write(a / "diff/old.dat", b"changed, but its mtime says otherwise", now - 5000)
    files["diff/new.dat"] = write(a / "diff/new.dat", b"new dat, changed", later)
    write(a / "diff/f1.txt", b"f1 changed, old mtime", now - 4000)
    files["diff/f2.txt"] = write(a / "diff/f2.txt", b"f2 changed", later)
    write(a / "logs/b.log", b"still log only")
    p2 = write(a / "part/p.bin", os.urandom(4096))
    files["part/p.bin"] = with_ranges(4096, p2, [(0, 10), (100, 5)], files["part/p.bin"])
    files["db/new.bin"] = write(a / "db/new.bin", b"added")
    inc = cli(daemon, "backup", "--media", store, "--type", "incremental", "a", "b", "--json")
    assert inc["base"] == full["image"]
    out2 = tmp_path / "out-inc"
    cli(daemon, "restore", "--media", store, "--image", inc["image"], "--to", str(out2), "--json")
    assert tree_files(out2 / "a") == files
    events = [json.loads(line) for line in (daemon.base / "spec-events.jsonl").read_text().splitlines()]
    stamps = [e["stamp"] for e in events
              if e["event"] == "post_snapshot" and e["backup_type"] == "incremental"]
    assert stamps == ["stamp-full", "stamp-full"]   # set_previous_backup_stamp for both components
    restores = [(e["event"], e["component"], e["additional"]) for e in events if "restore" in e["event"]]
    # the second restore ran two images: additional restores true on the first, false on the last
    last_run = [r for r in restores if r[0] == "pre_restore"][-4:]
    assert [r[2] for r in last_run] == [True, True, False, False]
    verified = cli(daemon, "media", "verify", "--media", store, "--json")
    assert verified["ok"]


def test_restore_targets_and_bad_inputs(daemon: DaemonRun, writers: WriterProcs, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    src = write(a / "data/src.bin", os.urandom(1000))
    other = write(a / "data/other.bin", os.urandom(300))
    write(a / "keep/k.txt", b"k")
    config: dict[str, Any] = {
        "schema": SCHEMA,
        "components": [{"name": "main",
                        "files": [{"path": f"{a}/data", "filespec": "*", "recursive": True}]}],
        "pre_restore": {"main": {"directed": [[f"{a}/data", "src.bin", "0:10,500:20",
                                               f"{a}/data", "other.bin", "100:10,0:20"]]}},
    }
    path = start_writer(daemon, writers, config)
    store = str(tmp_path / "media")
    full = cli(daemon, "backup", "--media", store, "a", "--json")

    # directed target: source ranges of the backed-up src.bin onto other.bin's ranges
    out = tmp_path / "directed"
    cli(daemon, "restore", "--media", store, "--image", full["image"], "--to", str(out), "--json")
    expected = bytearray(other)
    expected[100:110] = src[0:10]
    expected[0:20] = src[500:520]
    assert (out / "a/data/other.bin").read_bytes() == bytes(expected)
    assert (out / "a/data/src.bin").read_bytes() == src

    # new target: the component's files go to a new directory of the volume, the rest stays
    config["pre_restore"] = {}
    path.write_text(json.dumps(config))
    out = tmp_path / "moved"
    cli(daemon, "restore", "--media", store, "--image", full["image"], "--to", str(out),
        "--new-target", f"{a}/data={a}/moved", "--json")
    assert tree_files(out / "a") == {"moved/src.bin": src, "moved/other.bin": other, "keep/k.txt": b"k"}
    events = [json.loads(line) for line in (daemon.base / "spec-events.jsonl").read_text().splitlines()]
    assert [e["new_targets"] for e in events if e["event"] == "pre_restore"][-1] == [[f"{a}/data",
                                                                                      f"{a}/moved"]]

    # directed targets whose ranges do not pair up, or run past the source: refused, nothing written
    for directed in ([f"{a}/data", "src.bin", "0:10", f"{a}/data", "other.bin", "0:10,20:5"],
                     [f"{a}/data", "src.bin", "990:20", f"{a}/data", "other.bin", "0:20"]):
        config["pre_restore"] = {"main": {"directed": [directed]}}
        path.write_text(json.dumps(config))
        out = tmp_path / "refused"
        result = cli(daemon, "restore", "--media", store, "--image", full["image"], "--to", str(out),
                     check=False)
        assert result.returncode == 1, result.stdout
        assert not out.exists() or not any(out.rglob("*")), "restore wrote before refusing"

    # bad partial files: refused before anything reaches the media
    images_before = sorted(os.listdir(store))
    write(a / "data/bad.ranges", ranges_file([(0, 10), (5, 10)]))          # overlapping
    write(a / "data/count.ranges", ranges_file([(0, 10)], count=2))       # count disagrees with length
    for ranges in ("0:10,990:20", f"file={a}/data/bad.ranges", f"file={a}/data/count.ranges"):
        config["post_snapshot"] = {"main": {"partial": [[f"{a}/data", "src.bin", ranges]]}}
        path.write_text(json.dumps(config))
        result = cli(daemon, "backup", "--media", store, "a", check=False)
        assert result.returncode == 1 and "partial file" in result.stderr, result.stderr
        assert sorted(os.listdir(store)) == images_before
    assert daemon.cli("snapshot", "list", "--json") == []
