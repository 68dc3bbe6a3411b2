"""The protection record of one volume: since when writes have been watched, and whether that ended.

One job: remember, across crashes and reboots, the last instant at which a
volume was known to be protected, so that a mount process starting after a
lapse knows from when to look for changes that bypassed capture (design §9.3).

The record is one small JSON file in the volume's state directory
(`statedir.protection_path`): ``{"state": "protecting", "pid", "since"}``
while a mount process protects the volume, ``{"state": "stopped",
"stopped_at"}`` once protection ended cleanly. While protecting, the file's
modification time is a heartbeat: the mount process touches it every
`HEARTBEAT` seconds, each time after it has handled every change the watcher
reported up to then.

Invariants:
- `lapse_start` is never later than the instant protection really ended: a
  clean end writes the moment the watcher stopped; an unclean one (a killed
  process, a power cut) leaves the last heartbeat, which is earlier.
- A missing record means the volume was never protected (a new volume): there
  is nothing to look for.
- Writes are atomic (`write_json_atomic`); the heartbeat only changes the
  modification time.
"""

from __future__ import annotations

import json
import os
import time

from shadowfs.statedir import utc_now, write_json_atomic

HEARTBEAT = 1.0
# ctime comes from the kernel's coarse clock, which may lag the time we read by a clock tick
# (at most 10 ms at HZ=100); a change this much before the lapse start is still looked at.
CLOCK_MARGIN = 0.05


class ProtectionRecord:
    """The protection record at `path` (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def lapse_start(self) -> float | None:
        """The instant (Unix time) after which changes were not seen by a watcher, or None if the
        volume was never protected. Unreadable records count from their modification time."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        try:
            with open(self.path, encoding="utf-8") as file:
                record = json.load(file)
            if record.get("state") == "stopped":
                return float(record["stopped_at"]) - CLOCK_MARGIN
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return st.st_mtime - CLOCK_MARGIN

    def begin(self) -> None:
        """Protection starts now, by this process."""
        write_json_atomic(self.path, {"state": "protecting", "pid": os.getpid(), "since": time.time(),
                                      "since_utc": utc_now()})

    def heartbeat(self, at: float) -> None:
        """Every change up to `at` has been handled."""
        try:
            os.utime(self.path, (at, at))
        except FileNotFoundError:
            self.begin()

    def end(self, at: float) -> None:
        """Protection ended at `at` (the watcher has handled every change until then)."""
        write_json_atomic(self.path, {"state": "stopped", "stopped_at": at, "stopped_at_utc": utc_now()})
