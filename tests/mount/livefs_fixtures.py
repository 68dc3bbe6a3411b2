"""Fixtures for tests of the live mount: a real `shadowfs.live.process` per test.

`LiveVolume` starts the mount process on a fresh backing directory under /tmp
(separate mount path, or in place over the backing directory), talks to it
over a socketpair like the daemon does, and always stops it and unmounts its
own mount path (only that one) when the test ends, also on failure.
`SnapshotReader` reads a snapshot by path through `snapview.SnapshotView`
on a read-only diff area and a backing descriptor opened before mounting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import AttrRecord
from shadowfs.errors import IpcError
from shadowfs.ipc import frames
from shadowfs.linux import mounts
from shadowfs.snapshot.view import LiveObjects, SnapshotView

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0


class MountClient:
    """The daemon's side of the control channel, blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.events: list[dict[str, Any]] = []
        self._next_id = 1

    def receive(self) -> dict[str, Any]:
        frame, fds = frames.recv_frame(self.sock)
        frames.close_fds(fds)
        return frame

    def wait_event(self, name: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("event") == name:
                self.events.remove(event)
                return event
        while True:
            frame = self.receive()
            if frame.get("event") == name:
                return frame
            self.events.append(frame)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request; return the reply (raise frames.RemoteError on `"ok": false`)."""
        request_id = self._next_id
        self._next_id += 1
        frames.send_frame(self.sock, {"op": op, "id": request_id, **fields})
        while True:
            frame = self.receive()
            if frame.get("id") == request_id:
                if not frame.get("ok"):
                    raise frames.RemoteError(frame.get("error", "request failed"))
                return frame
            self.events.append(frame)

    def snapshot(self, name: str = "snap") -> int:
        """hold / commit / release: a new snapshot's sequence."""
        self.call("hold", timeout=10.0)
        try:
            seq = self.call("commit", snapshot_id=f"{name}-{self._next_id}", set_id="set-" + name,
                            created="2026-01-01T00:00:00Z")["seq"]
        finally:
            self.call("release")
        return int(seq)


class LiveVolume:
    """One running mount process over a temporary backing directory."""

    def __init__(self, in_place: bool, max_bytes: int = 0) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="shadowfs-live-", dir="/tmp"))
        os.chmod(self.top, 0o755)
        self.backing = self.top / "backing"
        self.backing.mkdir()
        os.chmod(self.backing, 0o755)
        self.mount = self.backing if in_place else self.top / "mnt"
        self.mount.mkdir(exist_ok=True)
        self.diff = self.top / "diff"
        self.protection = self.top / "protection"
        self.log_path = self.top / "mountproc.log"
        self.in_place = in_place
        self.backing_fd = os.open(self.backing, os.O_RDONLY | os.O_DIRECTORY)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: MountClient | None = None
        self.allowed_errors: list[str] = []
        self._start(max_bytes)

    def _start(self, max_bytes: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shadowfs.live.process", "--control-fd", str(child.fileno()),
                 "--volume", "vol", "--backing", str(self.backing), "--mount", str(self.mount),
                 "--diff-area", str(self.diff), "--protection", str(self.protection),
                 "--max-diff-area", str(max_bytes)],
                pass_fds=[child.fileno()], stdout=log, stderr=log, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)})
        child.close()
        parent.settimeout(READY_TIMEOUT)
        self.client = MountClient(parent)
        try:
            self.client.wait_event("ready")
        except (frames.ChannelClosed, OSError) as exc:
            raise RuntimeError(f"mount process did not get ready: {exc}\n{self.log()}") from exc
        parent.settimeout(CALL_TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def path(self, *parts: str) -> str:
        return os.path.join(self.mount, *parts)

    def graveyard(self) -> list[str]:
        """Names in the graveyard, read through the backing descriptor (never the mount)."""
        fd = os.open(".shadowfs/graveyard", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.backing_fd)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def area(self) -> DiffArea:
        return DiffArea.open(str(self.diff), readonly=True)

    def used_bytes(self) -> int:
        area = self.area()
        try:
            return area.used_bytes()
        finally:
            area.close()

    def reader(self, seq: int) -> SnapshotReader:
        return SnapshotReader(self, seq)

    def stop(self) -> int | None:
        """Stop the process (a `stop` request, then SIGTERM, then SIGKILL); unmount our own path if
        still mounted. (Closing the control channel alone leaves a mount process serving.)"""
        code = None
        if self.client is not None:
            with contextlib.suppress(OSError, IpcError):
                self.client.call("stop")
            self.client.sock.close()
            self.client = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if mounts.is_fuse_mount(str(self.mount)):
            mounts.unmount(str(self.mount))
        return code

    def unexpected_errors(self, log: str) -> list[str]:
        return [line for line in log.splitlines() if (" ERROR " in line or "Traceback" in line)
                and not any(allowed in line for allowed in self.allowed_errors)]

    def cleanup(self) -> None:
        self.stop()
        os.close(self.backing_fd)
        if not mounts.is_fuse_mount(str(self.mount)):
            shutil.rmtree(self.top, ignore_errors=True)


class SnapshotReader:
    """Read one snapshot by path, the way the browser will (inode numbers, read rule)."""

    def __init__(self, volume: LiveVolume, seq: int) -> None:
        self.area = volume.area()
        self.live = LiveObjects(volume.backing_fd)
        self.view = SnapshotView(self.area, self.live, seq)

    def close(self) -> None:
        self.live.close()
        self.area.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ino(self, path: str) -> int:
        ino = self.view.root_ino
        for part in [p for p in path.split("/") if p]:
            ino = self.view.lookup(ino, os.fsencode(part)).ino
        return ino

    def attr(self, path: str) -> AttrRecord:
        return self.view.attr(self.ino(path), with_xattrs=True)

    def exists(self, path: str) -> bool:
        try:
            self.ino(path)
        except FileNotFoundError:
            return False
        return True

    def read(self, path: str) -> bytes:
        ino = self.ino(path)
        size = self.view.attr(ino).size
        return self.view.read(ino, 0, size, size)

    def listdir(self, path: str = "") -> list[str]:
        return [os.fsdecode(name) for name, _ in self.view.listdir(self.ino(path))]

    def readlink(self, path: str) -> bytes:
        return self.view.readlink(self.ino(path))


@pytest.fixture(params=["separate", "in_place"])
def volume(request: pytest.FixtureRequest) -> Iterator[LiveVolume]:
    """A live volume, mounted at a separate path or in place over its backing directory."""
    vol = LiveVolume(in_place=request.param == "in_place")
    try:
        yield vol
    finally:
        log = vol.log()
        vol.cleanup()
    assert not vol.unexpected_errors(log), "mount process logged errors:\n" + log


@pytest.fixture
def separate_volume() -> Iterator[LiveVolume]:
    vol = LiveVolume(in_place=False)
    try:
        yield vol
    finally:
        log = vol.log()
        vol.cleanup()
    assert not vol.unexpected_errors(log), "mount process logged errors:\n" + log
