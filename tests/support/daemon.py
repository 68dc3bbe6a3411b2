"""End-to-end harness: a real `shadowfs daemon` in a subprocess, driven through
the real CLI, with temporary state, backing directories and mount root.

The `daemon` fixture runs on the test's tmp_path and always stops the daemon and
unprotects its volumes (`shadowfs stop --unprotect`; mount processes outlive a
daemon that is merely stopped). What is then still mounted under the test's
tmp_path fails the test and is unmounted (tests/conftest.py), never anything
else; mount processes of this state directory still running are terminated.
"""

from __future__ import annotations

import contextlib
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

from shadowfs import statedir

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
        return bool(status.get("ready")) and all(p.get("state", "running") == "running" for p in procs)

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

    def shutdown(self, unprotect: bool = True) -> None:
        """`shadowfs stop [--unprotect]` and wait for the daemon process to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.cli("stop", *(["--unprotect"] if unprotect else []), check=False)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def mount_processes(self) -> list[int]:
        """Pids of mount processes of this state directory (they outlive a stopped daemon)."""
        return statedir.mount_process_pids(str(self.state))

    def cleanup(self) -> None:
        """Stop the daemon and unprotect every volume; end mount processes left without a daemon.
        What is left mounted is the check of tests/conftest.py."""
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown(unprotect=True)
        self.proc = None
        for signum, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            pids = self.mount_processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline and self.mount_processes():
                time.sleep(0.05)

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

