"""The backup CLI without a daemon (`media list`, `media verify`, `restore --to`) and progress output."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.cli import common, main
from shadowfs.cli.progress import Progress


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


def test_json_progress_is_throttled() -> None:
    stream = io.StringIO()
    progress = Progress("backup", json_lines=True, stream=stream)
    for n in range(10_000):
        progress({"files": n, "bytes": n * 10, "path": f"v:f{n}"})
    progress.done()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert 1 <= len(lines) <= 3
    assert lines[-1]["done"] is True and lines[-1]["files"] == 9999 and lines[-1]["progress"] == "backup"


def test_no_bar_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress("restore", stream=stream, total=10)
    progress({"files": 1, "bytes": 1, "records": 1, "path": "v:x"})
    progress.done()
    assert stream.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress("restore", stream=stream, total=10)
    progress({"files": 5, "bytes": 2048, "records": 5, "path": "v:x"})
    progress.done()
    text = stream.getvalue()
    assert "[" + "#" * 15 + "-" * 15 + "] 5/10" in text and text.endswith("\n")
