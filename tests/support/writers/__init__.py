"""Writer processes for the end-to-end tests of the service (`WriterProcs`) and their event logs.

Every writer the tests start is a real process (`python -m tests.support.writers.eventlog_writer`,
`shadowfs writer sqlite`, `shadowfs writer run --manifest`); `WriterProcs.stop_all` kills whatever is
left, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.daemon import SHADOWFS, DaemonRun

ROOT = Path(__file__).resolve().parents[3]


class WriterProcs:
    """Writer processes of one test, all logging their events to one JSON-lines file."""

    def __init__(self, run: DaemonRun) -> None:
        self.run = run
        self.log = run.base / "events.jsonl"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_eventlog(self, name: str, files: Path, *extra: str) -> subprocess.Popen[bytes]:
        files.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tests.support.writers.eventlog_writer", "--state", str(self.run.state),
                "--log", str(self.log), "--name", name, "--files", str(files), *extra]
        return self._start(name, argv)

    def start_sqlite(self, name: str, db: Path, *extra: str) -> subprocess.Popen[bytes]:
        return self._start(name, SHADOWFS + ["writer", "sqlite", "--db", str(db), *extra])

    def start_express(self, name: str, manifest: Path, env: dict[str, str] | None = None
                      ) -> subprocess.Popen[bytes]:
        """`shadowfs writer run --manifest` (`name`: the writer's name in the manifest), with `env`
        added to its environment (its commands inherit it)."""
        return self._start(name, SHADOWFS + ["writer", "run", "--manifest", str(manifest)], env)

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        with open(self.run.base / f"writer-{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, env={**self.run.env, **(env or {})}, cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def wait_registered(self, *names: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
        """The `writers --json` entries of the named writers, once all are registered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            writers = {w["writer_name"]: w for w in self.run.cli("writers", "--json")}
            if all(n in writers for n in names):
                return writers
            for name in names:
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"writer {name} exited {proc.returncode}: {self.output(name)}")
            time.sleep(0.05)
        raise AssertionError(f"writers {names} did not register: {self.run.cli('writers', '--json')}")

    def output(self, name: str) -> str:
        path = self.run.base / f"writer-{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in records if name is None or r["name"] == name]

    def sequence(self, name: str, *, since: float = 0.0) -> list[str]:
        hooks = {"identify", "prepare_backup", "prepare_snapshot", "freeze", "thaw", "post_snapshot", "abort",
                 "backup_complete", "backup_shutdown", "pre_restore", "post_restore"}
        return [r["event"] for r in self.events(name) if r["event"] in hooks and r["t"] >= since]

    def wait_event(self, name: str, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.events(name) if r["event"] == event]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"writer {name} never logged {event}: {self.sequence(name)}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def writer_procs(daemon: DaemonRun) -> Iterator[WriterProcs]:
    """The body of a `writers` fixture: `yield from writer_procs(daemon)`."""
    procs = WriterProcs(daemon)
    try:
        yield procs
    finally:
        procs.stop_all()
