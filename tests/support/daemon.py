"""End-to-end harness: a real `shadowfs daemon` in a subprocess, driven through
the real CLI, with temporary state, backing directories and mount root.

The `daemon` fixture runs on the test's tmp_path and always stops the daemon. A
stopped daemon must have unmounted everything it mounted: a FUSE mount still left
under the test's tmp_path fails the test and is unmounted (tests/conftest.py),
never anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHADOWFS = [sys.executable, "-m", "shadowfs"]


class CliError(Exception):
    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"exit {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class DaemonRun:
    """One daemon on a private state directory and mount root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.mount_root = base / "mnt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SHADOWFS_STATE": str(self.state),
                "SHADOWFS_MOUNT_ROOT": str(self.mount_root)}

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(SHADOWFS + ["daemon"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                status = self.cli("status", "--json")
            except CliError:
                time.sleep(0.1)
                continue
            if self._all_ready(status):
                return
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready: {self.log.read_text()[-2000:]}")

    @staticmethod
    def _all_ready(status: dict[str, Any]) -> bool:
        procs = [v.get("process") or {} for v in status.get("volumes", [])] + [status.get("browser", {})]
        return all(p.get("state", "running") == "running" for p in procs)

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.cli("status", "--json")
            if self._all_ready(status):
                return status
            time.sleep(0.1)
        raise RuntimeError(f"children not ready: {status}")

    def cli(self, *args: str, check: bool = True) -> Any:
        result = subprocess.run(SHADOWFS + list(args), env=self.env, capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            if check:
                raise CliError(result.returncode, result.stderr)
            return result
        if "--json" in args:
            return json.loads(result.stdout)
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        """Stop the daemon; what it leaves mounted is the check of tests/conftest.py."""
        self.stop()

    def add_volume(self, name: str, *extra: str) -> Path:
        backing = self.base / f"vol-{name}"
        backing.mkdir(exist_ok=True)
        self.cli("volume", "add", name, str(backing), *extra)
        return backing

    def snapshot(self, *volumes: str) -> dict[str, Any]:
        return self.cli("snapshot", "create", *volumes, "--json")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonRun]:
    run = DaemonRun(tmp_path)
    run.start()
    try:
        yield run
    finally:
        run.cleanup()

