"""The backup CLI without a daemon (`media list`, `media verify`, `restore --to`), in process.

Its progress output is tested in tests/unit/test_progress.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.cli import common, main


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, str]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"hello" * 1000)
    path = str(tmp_path / "media")
    return path, backup(BackupRequest(path, {"vol": VolumeSource(str(src))}, "full")), str(src)


def test_media_list_and_verify(store: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, image, _ = store
    assert main.main(["media", "list", "--media", path, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in listed] == [image] and listed[0]["type"] == "full"
    assert main.main(["media", "verify", "--media", path]) == 0
    assert "no problems" in capsys.readouterr().out
    pack = os.path.join(path, image, "data", "000000.pack")
    with open(pack, "r+b") as f:
        f.write(b"X")
    assert main.main(["media", "verify", "--media", path, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and any("000000.pack" in p["message"] for p in report["problems"])


def test_restore_to(store: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, image, _ = store
    out = tmp_path / "out"
    assert main.main(["restore", "--media", path, "--image", image, "--to", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["targets"] == {"vol": str(out / "vol")} and result["files"] == 1
    assert (out / "vol" / "d" / "f").read_bytes() == b"hello" * 1000
    assert main.main(["restore", "--media", path, "--image", "no-such", "--to", str(out)]) == 2
    assert capsys.readouterr().err.startswith("shadowfs: no image no-such")


def test_media_option_or_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    store: tuple[str, str, str]) -> None:
    monkeypatch.delenv(common.MEDIA_ENV, raising=False)
    assert main.main(["media", "list"]) == 2
    assert "--media" in capsys.readouterr().err
    monkeypatch.setenv(common.MEDIA_ENV, store[0])
    assert main.main(["media", "list"]) == 0
    assert store[1] in capsys.readouterr().out
