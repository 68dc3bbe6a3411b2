"""A live mount outlives its serving process: a new process takes over the kernel connection.

The file system is tests/support/handoff_fs.py. Its first process mounts under
the test's tmp_path and sends its FUSE descriptor over a socket; the test keeps
it, as the daemon will, kills the process with SIGKILL and starts the next one
on its copy (`shadowfs.live.handoff.take_over`). The mount is never unmounted
in between: st_dev stays, reads and writes are served by the new process, and
a read that the killed process had taken and not answered is answered by the
new one, thanks to FUSE_NOTIFY_RESEND. Without the resume libfuse answers EIO;
without the resend the read in flight waits until the resend comes.

Each test unmounts its mount, kills its processes and closes the descriptor
when it ends, also on failure; closing the last descriptor of the connection
ends any request still waiting (ENOTCONN).
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from shadowfs.errors import TakeOverError
from shadowfs.linux import mounts
from shadowfs.live import handoff

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "tests" / "support" / "handoff_fs.py"
EVENT_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0


class Server:
    """One process of the file system and its control socket."""

    def __init__(self, proc: subprocess.Popen[bytes], control: socket.socket, log: Path) -> None:
        self.proc = proc
        self.control = control
        self.log = log

    def event(self, name: str) -> tuple[dict[str, Any], list[int]]:
        """The next event, which must be `name` (with the descriptors that came with it)."""
        try:
            message, fds, _, _ = socket.recv_fds(self.control, 65536, 4)
        except TimeoutError:
            raise AssertionError(f"no {name!r} event in {EVENT_TIMEOUT} s\n{self.output()}") from None
        if not message:
            raise AssertionError(f"the process ended before {name!r}\n{self.output()}")
        event = json.loads(message)
        assert event["event"] == name, (event, self.output())
        return event, fds

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# A client of the mount in its own process: it opens a file, then reads it from offset 0 for each
# line on stdin, printing what it read and when. The test process itself never holds a file of the
# mount open while it starts a process: the child would close it before exec, which sends FLUSH to
# a file system that may have no server at that moment, and wait for it.
CLIENT = """
import errno, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print(json.dumps({"opened": time.monotonic()}), flush=True)
for _ in sys.stdin:
    try:
        print(json.dumps({"data": os.pread(fd, 4096, 0).decode(), "at": time.monotonic()}), flush=True)
    except OSError as exc:
        print(json.dumps({"data": "error " + errno.errorcode[exc.errno], "at": time.monotonic()}), flush=True)
"""


class Client:
    """A process holding one file of the mount open (CLIENT)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert "opened" in self.line(EVENT_TIMEOUT)

    def line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        text = self.proc.stdout.readline() if ready else ""
        return json.loads(text) if text else {}

    def ask(self) -> None:
        """Start a read (its answer comes with `answer`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("read\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> tuple[str | None, float | None]:
        """What the read returned and when, or (None, None) if it is not answered within `timeout`."""
        reply = self.line(timeout)
        return reply.get("data"), reply.get("at")

    def read(self) -> str | None:
        self.ask()
        return self.answer(ANSWER_TIMEOUT)[0]


class Handoff:
    """The mount under tmp_path, the descriptor the test keeps, and every process started."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mount = tmp_path / "mnt"
        self.mount.mkdir()
        self.fuse_fd: int | None = None
        self.servers: list[Server] = []
        self.clients: list[Client] = []

    def start(self, mode: str, label: str, *, block_slow: bool = False) -> tuple[Server, dict[str, Any]]:
        """Start a process of the file system; return it and its "ready" event."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [sys.executable, str(SERVER), mode, "--control-fd", str(theirs.fileno()), "--label", label]
        pass_fds = [theirs.fileno()]
        if mode == "mount":
            args += ["--mount", str(self.mount)]
        else:
            assert self.fuse_fd is not None
            args += ["--fuse-fd", str(self.fuse_fd)]
            pass_fds.append(self.fuse_fd)
        if block_slow:
            args.append("--block-slow")
        log = self.tmp_path / f"{label}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, pass_fds=pass_fds, stdout=out, stderr=out, cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        theirs.close()
        ours.settimeout(EVENT_TIMEOUT)
        server = Server(proc, ours, log)
        self.servers.append(server)
        if mode == "mount":
            _, fds = server.event("mounted")
            assert len(fds) == 1
            self.fuse_fd = fds[0]
        ready, _ = server.event("ready")
        return server, ready

    def client(self, name: str) -> Client:
        client = Client(self.mount / name)
        self.clients.append(client)
        return client

    def path(self, name: str) -> Path:
        return self.mount / name

    def cleanup(self) -> None:
        """Unmount (lazily: a client may still wait), kill every process, close the descriptor."""
        if mounts.is_fuse_mount(str(self.mount)):
            mounts.unmount(str(self.mount), lazy=True)
        for client in self.clients:
            client.proc.kill()  # a client waiting on a request dies only when the connection ends
        for server in self.servers:
            server.kill()
            server.control.close()
        if self.fuse_fd is not None:
            os.close(self.fuse_fd)  # the last descriptor: the connection ends, and every request with it
            self.fuse_fd = None
        for client in self.clients:
            client.proc.communicate(timeout=ANSWER_TIMEOUT)


@pytest.fixture
def handoff_mount(tmp_path: Path) -> Iterator[Handoff]:
    harness = Handoff(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


def fuse_mount_count(path: Path) -> int:
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as table:
        return sum(1 for line in table if mounts.unescape(line.split()[1]) == str(path))


def test_the_set_up_venv_has_the_patched_pyfuse3() -> None:
    assert handoff.can_take_over(), f"pyfuse3 {pyfuse3.__version__} lacks the handoff patch"
    assert "+shadowfs" in pyfuse3.__version__


def test_the_pin_the_set_up_and_the_checksum_name_one_pyfuse3_release() -> None:
    pinned = re.search(r'"pyfuse3==([^"]+)"', (REPO / "pyproject.toml").read_text())
    built = re.search(r"^SHADOWFS_PYFUSE3_VERSION=(\S+)$", (REPO / "tools" / "_setup.sh").read_text(), re.M)
    assert pinned and built and pinned.group(1) == built.group(1)
    checksum = REPO / "patches" / "pyfuse3" / f"pyfuse3-{built.group(1)}.tar.gz.sha256"
    assert checksum.read_text().split() == [checksum.read_text().split()[0], checksum.stem]
    assert pyfuse3.__version__.startswith(built.group(1) + "+")


def test_take_over_refuses_what_is_not_a_fuse_connection(tmp_path: Path) -> None:
    with open(tmp_path / "file", "wb") as plain, pytest.raises(TakeOverError, match="not a FUSE connection"):
        handoff.take_over(pyfuse3.Operations(), plain.fileno(), [])
    with pytest.raises(TakeOverError, match="Bad file descriptor"):
        handoff.check_fuse_fd(1_000_000)


@pytest.mark.fuse
def test_a_fuse_descriptor_without_a_mount_is_refused_before_libfuse_runs() -> None:
    class Ops(pyfuse3.Operations):
        def init(self) -> None:
            raise AssertionError("ops.init() ran")

    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        handoff.check_fuse_fd(fd)
        with pytest.raises(TakeOverError, match="has no connection: no file system was mounted with it"):
            handoff.resend(fd)
        with pytest.raises(TakeOverError, match="has no connection"):
            handoff.take_over(Ops(), fd, [])
    finally:
        os.close(fd)


@pytest.mark.fuse
def test_a_new_process_takes_over_without_unmounting(handoff_mount: Handoff) -> None:
    h = handoff_mount
    first, _ = h.start("mount", "p1", block_slow=True)
    st_dev = os.stat(h.mount).st_dev
    assert h.path("who").read_text() == f"p1 pid={first.proc.pid} reads=1\n"
    held = h.client("who")  # opened under p1, read under p2
    assert held.read() == f"p1 pid={first.proc.pid} reads=2\n"
    in_flight = h.client("slow")
    in_flight.ask()
    first.event("in_slow_read")
    killed = time.monotonic()
    first.kill()
    reaped = time.monotonic()

    second, ready = h.start("take-over", "p2")
    answer, answered = in_flight.answer(ANSWER_TIMEOUT)
    assert answer == "p2\n", second.output()
    assert answered is not None
    assert ready["init_called"], "resume() did not run ops.init"

    assert os.stat(h.mount).st_dev == st_dev
    assert fuse_mount_count(h.mount) == 1
    assert h.path("who").read_text() == f"p2 pid={second.proc.pid} reads=1\n"
    assert held.read() == f"p2 pid={second.proc.pid} reads=2\n"
    payload = b"written through the mount, served by p2\n" * 100
    fd = os.open(h.path("data"), os.O_RDWR)
    try:
        assert os.pwrite(fd, payload, 0) == len(payload)
        assert os.pread(fd, len(payload) + 10, 0) == payload
    finally:
        os.close(fd)
    assert os.stat(h.path("data")).st_size == len(payload)

    timings = {  # milliseconds
        "kill_to_answer": (answered - killed) * 1000,
        "kill_to_reaped": (reaped - killed) * 1000,
        "interpreter_start": (ready["started"] - reaped) * 1000,
        "imports": (ready["imported"] - ready["started"]) * 1000,
        "take_over": (ready["serving"] - ready["imported"]) * 1000,
        "serving_to_answer": (answered - ready["serving"]) * 1000,
        "without_python_start_up": (answered - ready["imported"]) * 1000,
    }
    print("handoff timings (ms): " + ", ".join(f"{name} {value:.1f}" for name, value in timings.items()))
    assert timings["without_python_start_up"] < 5000, timings


@pytest.mark.fuse
def test_without_the_resume_libfuse_answers_eio_and_the_mount_waits_for_a_real_take_over(
        handoff_mount: Handoff) -> None:
    h = handoff_mount
    first, _ = h.start("mount", "p1")
    st_dev = os.stat(h.mount).st_dev
    first.kill()

    second, ready = h.start("init-only", "p2")
    assert not ready["init_called"]
    with pytest.raises(OSError) as refused:
        h.path("who").read_text()
    assert refused.value.errno == errno.EIO
    second.kill()

    third, _ = h.start("take-over", "p3")
    assert os.stat(h.mount).st_dev == st_dev
    assert h.path("who").read_text() == f"p3 pid={third.proc.pid} reads=1\n"


@pytest.mark.fuse
def test_without_the_resend_the_read_in_flight_waits_until_it_comes(handoff_mount: Handoff) -> None:
    h = handoff_mount
    first, _ = h.start("mount", "p1", block_slow=True)
    in_flight = h.client("slow")
    in_flight.ask()
    first.event("in_slow_read")
    first.kill()

    second, _ = h.start("resume-only", "p2")
    assert h.path("who").read_text() == f"p2 pid={second.proc.pid} reads=1\n"
    assert in_flight.answer(1.0) == (None, None), "the kernel sent the request again on its own"
    assert h.fuse_fd is not None
    handoff.resend(h.fuse_fd)
    assert in_flight.answer(ANSWER_TIMEOUT)[0] == "p2\n"
