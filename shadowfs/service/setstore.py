"""What the daemon remembers about each snapshot set beyond the diff areas: context and lifetime.

One job: keep `<state>/sets.json`, one entry per snapshot set made through the
service, so that the context (VSS_CTX_*), its attribute bits and whether the
set is auto-release survive a daemon restart.

Layout: {"version": 1, "sets": {SET_ID: {"context", "attributes", "created",
"state": "creating"|"done", "auto_release": bool, "owner_pid", "volumes",
"writers", "label" (only if given), "held_ms": {VOLUME: ms} once done}}}.

Invariants:
- An entry is written ("creating") before the set's first snapshot is
  committed and marked "done" after the whole sequence succeeded, so a daemon
  killed in between leaves an entry that the next daemon start deletes with
  its snapshots: an auto-release or half-made set never outlives the daemon
  that made it.
- A set with no entry (made before this file existed) is persistent and
  client-accessible, as `snapshot create` always made them.
- The file is replaced atomically (`statedir.write_json_atomic`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from shadowfs import statedir
from shadowfs.documents.enums import SnapshotContext
from shadowfs.service.protocol import context_attributes

log = logging.getLogger(__name__)

SETS_FILE = "sets.json"
VERSION = 1
LEGACY_CONTEXT = SnapshotContext.CLIENT_ACCESSIBLE


class SetStore:
    """The `sets.json` table; every method is blocking (call it from a worker thread or at start)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, SETS_FILE)
        self.sets: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); treating every set as persistent", self.path, exc)
            return
        if (not isinstance(data, dict) or data.get("version") != VERSION
                or not isinstance(data.get("sets"), dict)):
            log.error("%s has an unknown layout; treating every set as persistent", self.path)
            return
        self.sets = {k: v for k, v in data["sets"].items() if isinstance(v, dict)}

    def save(self) -> None:
        with self._lock:
            statedir.write_json_atomic(self.path, {"version": VERSION, "sets": self.sets})

    def begin(self, set_id: str, context: SnapshotContext, created: str, owner_pid: int | None,
              volumes: list[str], writers: list[str], label: str | None = None) -> None:
        self.sets[set_id] = {"context": context.value, "attributes": int(context_attributes(context)),
                             "created": created, "state": "creating",
                             "auto_release": context.auto_release, "owner_pid": owner_pid,
                             "volumes": volumes, "writers": writers}
        if label is not None:
            self.sets[set_id]["label"] = label
        self.save()

    def label_of(self, set_id: str) -> str | None:
        label = self.sets.get(set_id, {}).get("label")
        return label if isinstance(label, str) else None

    def finish(self, set_id: str, held_ms: dict[str, float] | None = None) -> None:
        """Mark the set whole; `held_ms` (volume -> how long its changes were held) is kept with it."""
        entry = self.sets.get(set_id)
        if entry is not None:
            entry["state"] = "done"
            if held_ms is not None:
                entry["held_ms"] = held_ms
            self.save()

    def forget(self, set_ids: list[str]) -> None:
        if any(self.sets.pop(s, None) is not None for s in list(set_ids)):
            self.save()

    def leftovers(self) -> list[str]:
        """Sets a previous daemon left behind that must not live on: auto-release or half made."""
        return [s for s, e in self.sets.items() if e.get("auto_release") or e.get("state") != "done"]

    def context_of(self, set_id: str) -> tuple[SnapshotContext, int]:
        entry = self.sets.get(set_id)
        if entry is None:
            return LEGACY_CONTEXT, int(context_attributes(LEGACY_CONTEXT))
        value = entry.get("context")
        try:
            context = SnapshotContext(value) if isinstance(value, str) else LEGACY_CONTEXT
        except ValueError:
            context = LEGACY_CONTEXT
        return context, int(entry.get("attributes", int(context_attributes(context))))
