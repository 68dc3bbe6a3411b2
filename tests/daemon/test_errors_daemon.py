"""Error kinds and exit codes with a real daemon: raw requests on its socket, the CLI in subprocesses,
the blocking requester, and a writer that vetoes a snapshot set."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowfs import errors
from shadowfs.errors import EXIT_PROBLEMS, EXIT_REFUSED, EXIT_UNREACHABLE
from shadowfs.ipc import client, frames
from shadowfs.vss.requester import SyncBackupComponents
from tests.support.daemon import DaemonRun
from tests.support.writers import WriterProcs, writer_procs

pytestmark = pytest.mark.fuse
MISSING = "3f2b8a52-5f8e-4a55-9a4c-0d3f8e0b7c11"


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)


def raw(state: Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes on a connection of its own; the first frame that comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(state / "daemon.sock"))
        sock.sendall(data)
        reply, fds = frames.recv_frame(sock)
    frames.close_fds(fds)
    return reply


def ask(state: Path, obj: dict[str, Any]) -> dict[str, Any]:
    return raw(state, frames.encode_frame({**obj, "id": 5}))


def failed(run: DaemonRun, *args: str, code: int) -> dict[str, Any]:
    """Run a CLI command with --json that must fail with `code`; its JSON error object."""
    result = run.cli(*args, "--json", check=False)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shadowfs: "), result.stderr
    error = json.loads(result.stdout)
    assert error["error"] == lines[0].removeprefix("shadowfs: ") and error["exit_code"] == code
    return error


def test_error_replies_carry_their_kind_on_the_wire(daemon: DaemonRun) -> None:
    state = daemon.state
    assert ask(state, {"op": "no_such_op"}) == {
        "id": 5, "ok": False, "error": "unknown operation 'no_such_op'", "kind": "refused"}
    assert ask(state, {"op": "volume_remove", "name": "nope"}) == {
        "id": 5, "ok": False, "error": "unknown volume 'nope'", "kind": "invalid"}
    reply = ask(state, {"op": "snapshot_delete", "snapshot": MISSING})
    assert reply["kind"] == "refused" and reply["error"] == f"unknown snapshot or snapshot set {MISSING}"
    reply = ask(state, {"op": "volume_add", "name": "x", "backing": str(daemon.base / "missing")})
    assert reply["kind"] == "invalid" and "does not exist" in reply["error"]
    malformed = raw(state, struct.pack(">I", 2) + b"[]")
    assert malformed["id"] is None and malformed["kind"] == "protocol" and not malformed["ok"]


def test_refusals_of_the_daemon_exit_2_with_their_kind(daemon: DaemonRun) -> None:
    assert failed(daemon, "volume", "remove", "nope", code=EXIT_REFUSED)["kind"] == "invalid"
    assert failed(daemon, "snapshot", "create", "nope", code=EXIT_REFUSED) == {
        "error": "unknown volume 'nope'", "kind": "invalid", "exit_code": 2}
    assert failed(daemon, "snapshot", "delete", MISSING, code=EXIT_REFUSED)["kind"] == "refused"
    daemon.add_volume("a")
    daemon.wait_ready()
    error = failed(daemon, "volume", "add", "a", str(daemon.base / "vol-a"), code=EXIT_REFUSED)
    assert error["kind"] == "invalid" and "already exists" in error["error"]
    error = failed(daemon, "backup", "--media", str(daemon.base / "media"), "nope", code=EXIT_REFUSED)
    assert error == {"error": "no volume nope", "kind": "backup_refused", "exit_code": 2}
    second = subprocess.run([sys.executable, "-m", "shadowfs", "daemon", "--json"], env=daemon.env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == EXIT_REFUSED and json.loads(second.stdout)["kind"] == "daemon_running"


def test_the_client_raises_the_daemons_class(daemon: DaemonRun) -> None:
    with client.DaemonClient(str(daemon.state), timeout=60) as conn:
        with pytest.raises(errors.ConfigError, match="^unknown volume 'nope'$"):
            conn.call({"op": "volume_remove", "name": "nope"})
        with pytest.raises(errors.RequestError, match="unknown operation"):
            conn.call({"op": "bogus"})
        assert conn.call({"op": "volume_list"}) == {"volumes": []}  # the connection goes on


def test_requester_errors_keep_what_the_daemon_meant(daemon: DaemonRun, tmp_path: Path) -> None:
    with pytest.raises(errors.DaemonUnavailable, match="not running") as caught:
        SyncBackupComponents(str(tmp_path / "nowhere"))
    assert errors.exit_code_of(caught.value) == EXIT_UNREACHABLE
    with SyncBackupComponents(str(daemon.state)) as bc:
        with pytest.raises(errors.RequesterRefused, match="unknown snapshot or snapshot set") as refused:
            bc.get_snapshot_properties(MISSING)
        assert isinstance(refused.value, errors.RequesterError)
        assert errors.exit_code_of(refused.value) == EXIT_REFUSED
        daemon.stop()
        with pytest.raises(errors.DaemonUnavailable, match="lost the shadowfs daemon"):
            bc.volumes()
    daemon.start()


def test_an_aborted_set_exits_1_as_set_aborted(daemon: DaemonRun, writers: WriterProcs) -> None:
    volume = daemon.add_volume("a")
    daemon.wait_ready()
    writers.start_eventlog("veto", volume / "veto", "--veto-at", "freeze")
    writers.wait_registered("veto")
    error = failed(daemon, "snapshot", "create", "a", code=EXIT_PROBLEMS)
    assert error["kind"] == "set_aborted" and error["error"].startswith("snapshot set aborted: ")
    with SyncBackupComponents(str(daemon.state)) as bc:
        bc.start_snapshot_set()
        bc.add_to_snapshot_set("a")
        with pytest.raises(errors.SnapshotSetAborted) as caught:
            bc.do_snapshot_set()
    assert isinstance(caught.value, errors.SetAborted) and isinstance(caught.value, errors.RequesterError)
    assert errors.exit_code_of(caught.value) == EXIT_PROBLEMS
    assert daemon.cli("snapshot", "list", "--json") == []
