"""Progress output of the backup CLI: JSON lines throttled, a bar only on a terminal."""

from __future__ import annotations

import io
import json

from shadowfs.cli.progress import Progress


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
