"""How every shadowfs process logs: one line per record on stderr, with a timestamp and who wrote it.

One job: configure the root logger of the daemon, its mount processes and its
browser alike. Under systemd stderr goes to the journal, which keeps the lines
with their own time; run by hand they carry it themselves.

Invariants:
- The level is the daemon's `--log-level`, handed to its children through
  $SHADOWFS_LOG_LEVEL (so a child restarted later logs at the same level); a
  value that is no level name falls back to INFO rather than stopping a
  process that protects data.
"""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "SHADOWFS_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error")


def level_from_env(default: int = logging.INFO) -> int:
    name = os.environ.get(LEVEL_ENV, "").strip().lower()
    return getattr(logging, name.upper()) if name in LEVELS else default


def configure(who: str, level: int | None = None) -> None:
    """Log to stderr as `who` (e.g. ``shadowfs-mount[db]``) at `level` (default: from the
    environment, else INFO)."""
    logging.basicConfig(stream=sys.stderr, level=level_from_env() if level is None else level,
                        format=f"%(asctime)s {who}[%(process)d] %(levelname)s %(name)s: %(message)s")


__all__ = ["LEVELS", "LEVEL_ENV", "configure", "level_from_env"]
