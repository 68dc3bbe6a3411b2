"""Progress of long jobs: a bar on a terminal, or throttled JSON lines, on stderr.

One job: turn the engines' progress callbacks (``{"files", "bytes", "path"}``)
into something a person or a script can follow, without slowing the job:

- with ``json_lines``: ``{"progress": "<what>", "files", "bytes", "path",
  "elapsed", "records"?, "total"?}`` (records applied, and how many there
  are, when known) at most every `JSON_INTERVAL` seconds, and one last line
  with ``"done": true``;
- else, on a terminal only: one line redrawn at most every `BAR_INTERVAL`
  seconds (a bar over ``records`` when the total is known, counters and rate
  otherwise);
- else nothing.

Stdout is never touched: it carries the command's result. Sizes and rates
have the CLI's one size form (`statedir.format_size`: "1.5K", "12M/s").
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from shadowfs.statedir import format_size

JSON_INTERVAL = 1.0
BAR_INTERVAL = 0.1
BAR_WIDTH = 30


class Progress:
    """A progress callback for one job named `what` (backup, restore, verify...)."""

    def __init__(self, what: str, *, json_lines: bool = False, stream: TextIO | None = None,
                 total: int | None = None) -> None:
        self.what = what
        self.json_lines = json_lines
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self.latest: dict[str, Any] = {"files": 0, "bytes": 0, "path": ""}
        self.enabled = json_lines or self.stream.isatty()

    def __call__(self, update: dict[str, Any]) -> None:
        self.latest = update
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < (JSON_INTERVAL if self.json_lines else BAR_INTERVAL):
            return
        self._last = now
        self._emit(now, done=False)

    def _emit(self, now: float, done: bool) -> None:
        elapsed = now - self.start
        files, size = int(self.latest.get("files", 0)), int(self.latest.get("bytes", 0))
        if self.json_lines:
            line: dict[str, Any] = {"progress": self.what, "files": files, "bytes": size,
                                    "path": self.latest.get("path", ""), "elapsed": round(elapsed, 3)}
            if "records" in self.latest:
                line["records"] = int(self.latest["records"])
            if self.total is not None:
                line["total"] = self.total
            if done:
                line["done"] = True
            self.stream.write(json.dumps(line) + "\n")
        else:
            rate = format_size(size / elapsed) + "/s" if elapsed > 0 else ""
            if self.total:
                count = int(self.latest.get("records", files))
                filled = min(BAR_WIDTH, BAR_WIDTH * count // self.total)
                head = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {count}/{self.total}"
            else:
                head = f"{files} files"
            text = f"{self.what}: {head}, {format_size(size)} {rate}"
            path = str(self.latest.get("path", ""))
            if not done and path:
                text += f"  {path[-40:]}"
            self.stream.write("\r\x1b[K" + text + ("\n" if done else ""))
            self._drawn = True
        self.stream.flush()

    def done(self) -> None:
        """The final line (JSON), or the finished bar (terminal)."""
        if self.enabled:
            self._emit(time.monotonic(), done=True)
