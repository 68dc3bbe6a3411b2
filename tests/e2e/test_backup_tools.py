"""restic and borg around `shadowfs exec`, as a user runs them: each backs up a consistent
snapshot of a 2,000-file volume at the volume's own path, twice with 10 files changed between.
Both restores equal the volume as it was (manifest compare), and the second run reads only what
changed: the exposed snapshot keeps inode numbers, sizes and times of unchanged files, which is
what both tools' change detection compares."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shadowfs.manifest import differences, manifest
from tests.support.daemon import SHADOWFS, DaemonRun

FILES = 2000
CHANGED = 10
MOST_READ_AGAIN = 20


def _fill(root: Path) -> None:
    for n in range(FILES):
        directory = root / f"d{n % 40:02d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{n:04d}").write_bytes(f"file {n}\n".encode() * (1 + n % 7))
    os.link(root / "d00" / "f0000", root / "hardlink")
    os.symlink("d01/f0001", root / "symlink")


def _filled_volume(daemon: DaemonRun) -> Path:
    volume = daemon.add_volume("vol")
    daemon.wait_ready()
    _fill(volume)
    return volume


def _change(root: Path) -> None:
    for n in range(0, FILES, FILES // CHANGED):
        with open(root / f"d{n % 40:02d}" / f"f{n:04d}", "ab") as f:
            f.write(b"changed\n")


def _exec(daemon: DaemonRun, env: dict[str, str], *command: str,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(SHADOWFS + ["exec", "vol", "--", *command], env={**daemon.env, **env},
                            capture_output=True, text=True, timeout=600, check=False, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _expected(root: Path) -> dict[str, tuple[object, ...]]:
    return manifest(str(root), with_ctime=False)


def test_restic_reads_only_what_changed(daemon: DaemonRun, tmp_path: Path) -> None:
    restic = shutil.which("restic")
    if restic is None:
        pytest.skip("restic is not installed (tools/_setup.sh installs it on Debian)")
    volume = _filled_volume(daemon)
    env = {"RESTIC_REPOSITORY": str(tmp_path / "repo"), "RESTIC_PASSWORD": "shadowfs test",
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([restic, "init"], env={**os.environ, **env}, check=True, capture_output=True)
    summaries = []
    expected = []
    for run in range(2):
        if run:
            _change(volume)
        expected.append(_expected(volume))
        out = _exec(daemon, env, restic, "backup", "--json", str(volume)).stdout
        summaries.append(next(json.loads(line) for line in out.splitlines()
                              if json.loads(line).get("message_type") == "summary"))
    first, second = summaries
    assert first["files_new"] == FILES + 1  # the files and the hard link's second name
    read_again = second["files_new"] + second["files_changed"]
    assert read_again <= MOST_READ_AGAIN, second
    # f0000 is among the changed files, and "hardlink" is its second name
    assert second["files_changed"] == CHANGED + 1 and second["files_unmodified"] == FILES - CHANGED
    restored = tmp_path / "restored"
    subprocess.run([restic, "restore", "latest", "--target", str(restored)], env={**os.environ, **env},
                   check=True, capture_output=True)
    assert differences(expected[1], _expected(restored / volume.relative_to("/"))) == []


def test_borg_reads_only_what_changed(daemon: DaemonRun, tmp_path: Path) -> None:
    borg = shutil.which("borg")
    if borg is None:
        pytest.skip("borg is not installed (tools/_setup.sh installs it on Debian)")
    volume = _filled_volume(daemon)
    env = {"BORG_REPO": str(tmp_path / "repo"), "BORG_BASE_DIR": str(tmp_path / "base"),
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    subprocess.run([borg, "init", "--encryption", "none"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    read = []
    expected = []
    for run in range(2):
        if run:
            _change(volume)
        expected.append(_expected(volume))
        result = _exec(daemon, env, borg, "create", "--list", "--filter", "AM", f"::run{run}", str(volume))
        read.append([line for line in result.stderr.splitlines() if line[:2] in ("A ", "M ")])
    assert len(read[0]) == FILES  # every file ("hardlink" is listed as h, a second name)
    assert len(read[1]) <= MOST_READ_AGAIN, read[1]
    assert {line[2:] for line in read[1]} >= {
        str(volume / f"d{n % 40:02d}" / f"f{n:04d}") for n in range(0, FILES, FILES // CHANGED)}
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run([borg, "extract", "::run1"], env={**os.environ, **env}, cwd=restored, check=True,
                   capture_output=True)
    assert differences(expected[1], _expected(restored / volume.relative_to("/"))) == []
