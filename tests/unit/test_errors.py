"""The one error hierarchy (`shadowfs.errors`), its exit codes and wire kinds, without a daemon.

The CLI runs as a real subprocess; where a peer must misbehave on purpose (reply with some kind,
close without a reply, never answer), the test itself listens on `<state>/daemon.sock`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shadowfs import errors
from shadowfs.errors import EXIT_INTERRUPTED, EXIT_PROBLEMS, EXIT_REFUSED, EXIT_UNREACHABLE
from shadowfs.ipc import client, frames

SHADOWFS = [sys.executable, "-m", "shadowfs"]
ROOT = Path(__file__).resolve().parents[2]

EXPECTED: dict[type[errors.ShadowfsError], tuple[str, int]] = {  # class: (kind, exit code)
    errors.ShadowfsError: ("error", EXIT_PROBLEMS),
    errors.CliError: ("usage", EXIT_REFUSED),
    errors.ConfigError: ("invalid", EXIT_REFUSED),
    errors.DaemonRunning: ("daemon_running", EXIT_REFUSED),
    errors.DiffAreaError: ("diff_area", EXIT_PROBLEMS),
    errors.UnsafePath: ("unsafe_path", EXIT_PROBLEMS),
    errors.WatchUnavailable: ("watch_unavailable", EXIT_PROBLEMS),
    errors.WatchOverflow: ("watch_overflow", EXIT_PROBLEMS),
    errors.DocumentError: ("bad_document", EXIT_PROBLEMS),
    errors.RangeError: ("bad_ranges", EXIT_PROBLEMS),
    errors.MediaError: ("media", EXIT_PROBLEMS),
    errors.MediaNotFound: ("media_not_found", EXIT_REFUSED),
    errors.RecordError: ("bad_record", EXIT_PROBLEMS),
    errors.BackupJobError: ("backup_failed", EXIT_PROBLEMS),
    errors.BackupRefused: ("backup_refused", EXIT_REFUSED),
    errors.RestoreError: ("restore_failed", EXIT_PROBLEMS),
    errors.RevertError: ("revert_failed", EXIT_PROBLEMS),
    errors.RevertRefused: ("revert_refused", EXIT_REFUSED),
    errors.IpcError: ("ipc", EXIT_PROBLEMS),
    errors.ProtocolError: ("protocol", EXIT_PROBLEMS),
    errors.RemoteError: ("remote", EXIT_PROBLEMS),
    errors.RequestError: ("refused", EXIT_REFUSED),
    errors.AccessDenied: ("denied", EXIT_REFUSED),
    errors.TreeBusy: ("busy", EXIT_REFUSED),
    errors.SnapshotHeld: ("held", EXIT_REFUSED),
    errors.SetAborted: ("set_aborted", EXIT_PROBLEMS),
    errors.PeerUnreachable: ("unreachable", EXIT_UNREACHABLE),
    errors.DaemonNotRunning: ("not_running", EXIT_UNREACHABLE),
    errors.DaemonStarting: ("starting", errors.EXIT_STARTING),
    errors.ChannelClosed: ("closed", EXIT_UNREACHABLE),
    errors.CallTimeout: ("timeout", EXIT_UNREACHABLE),
    errors.DaemonError: ("daemon_failed", EXIT_PROBLEMS),
    errors.ChildFailed: ("child_failed", EXIT_PROBLEMS),
    errors.StartupError: ("startup_failed", EXIT_PROBLEMS),
    errors.TakeOverError: ("take_over_failed", EXIT_PROBLEMS),
    errors.IOFailed: ("io", EXIT_PROBLEMS),
    errors.VssError: ("vss", EXIT_PROBLEMS),
    errors.RequesterError: ("requester_failed", EXIT_PROBLEMS),
    errors.RequesterRefused: ("requester_refused", EXIT_REFUSED),
    errors.DaemonUnavailable: ("daemon_unavailable", EXIT_UNREACHABLE),
    errors.SnapshotSetAborted: ("set_aborted", EXIT_PROBLEMS),
    errors.WriterError: ("writer_refused", EXIT_REFUSED),
    errors.ManifestError: ("bad_manifest", EXIT_REFUSED),
}

# where each of the 21 classes lived before `shadowfs.errors`; those imports keep working
OLD_HOMES = [
    ("shadowfs.statedir", "ConfigError"), ("shadowfs.statedir", "DaemonRunning"),
    ("shadowfs.diffarea.area", "DiffAreaError"), ("shadowfs.media", "MediaError"),
    ("shadowfs.media", "RecordError"), ("shadowfs.backup.job", "BackupJobError"),
    ("shadowfs.restore.engine", "RestoreError"), ("shadowfs.documents", "DocumentError"),
    ("shadowfs.documents.errors", "RangeError"), ("shadowfs.linux.confined", "UnsafePath"),
    ("shadowfs.ipc.frames", "ProtocolError"), ("shadowfs.ipc.frames", "ChannelClosed"),
    ("shadowfs.ipc.frames", "RemoteError"), ("shadowfs.ipc.frames", "CallTimeout"),
    ("shadowfs.ipc.frames", "RequestError"), ("shadowfs.daemon.server", "ChildFailed"),
    ("shadowfs.service.broker", "SetAborted"), ("shadowfs.vss.requester", "RequesterError"),
    ("shadowfs.vss.requester", "SnapshotSetAborted"), ("shadowfs.vss.writer", "WriterError"),
    ("shadowfs.live.process", "StartupError"), ("shadowfs.cli.main", "CliError"),
]


def shadowfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SHADOWFS + list(args), capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL, cwd=ROOT)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shadowfs: "), result.stderr
    return lines[0].removeprefix("shadowfs: ")


# ---- the hierarchy ------------------------------------------------------------------------------------


def test_every_class_has_its_kind_and_exit_code() -> None:
    defined = {obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, errors.ShadowfsError)}
    assert defined == set(EXPECTED)
    for cls, (kind, code) in EXPECTED.items():
        assert (cls.kind, cls.exit_code, errors.exit_code_of(cls("x"))) == (kind, code, code), cls
        assert cls.__doc__ and cls.__doc__.strip(), cls
    registered = {kind: errors.class_for(kind) for kind, _ in EXPECTED.values()}
    assert registered["set_aborted"] is errors.SetAborted  # the requester's class shares the kind
    assert all(registered[kind] is cls for cls, (kind, _) in EXPECTED.items()
               if cls is not errors.SnapshotSetAborted)


def test_a_new_class_cannot_take_a_kind_that_is_taken() -> None:
    with pytest.raises(TypeError, match="'refused' of Mine is taken by RequestError"):
        type("Mine", (errors.ShadowfsError,), {"kind": "refused"})


def test_builtin_bases_stay_for_the_except_clauses_that_use_them() -> None:
    for cls, base in ((errors.ConfigError, ValueError), (errors.UnsafePath, ValueError),
                      (errors.DocumentError, ValueError), (errors.RecordError, ValueError),
                      (errors.ProtocolError, ValueError), (errors.ChannelClosed, ConnectionError),
                      (errors.CallTimeout, TimeoutError), (errors.RemoteError, RuntimeError),
                      (errors.WatchUnavailable, OSError)):
        assert issubclass(cls, base) and issubclass(cls, errors.ShadowfsError), cls
    assert issubclass(errors.RestoreError, errors.MediaError)
    assert issubclass(errors.BackupJobError, errors.MediaError)
    assert issubclass(errors.SnapshotSetAborted, errors.RequesterError)


@pytest.mark.parametrize("module, name", OLD_HOMES, ids=lambda v: str(v))
def test_old_import_paths_give_the_same_class(module: str, name: str) -> None:
    result = subprocess.run([sys.executable, "-c", (
        "import importlib, sys\n"
        "from shadowfs import errors\n"
        f"assert getattr(importlib.import_module({module!r}), {name!r}) is getattr(errors, {name!r})\n")],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_exit_code_of_what_is_not_a_shadowfs_error() -> None:
    assert errors.exit_code_of(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
    assert errors.exit_code_of(OSError(5, "Input/output error")) == EXIT_PROBLEMS
    assert errors.exit_code_of(ValueError("bug")) == EXIT_PROBLEMS
    assert errors.kind_of(KeyboardInterrupt()) == "interrupted"
    assert errors.kind_of(OSError(5, "Input/output error")) == "io"
    assert errors.kind_of(ValueError("bug")) == "internal"
    assert errors.message_of(errors.ConfigError("two\n  lines")) == "two lines"


# ---- the wire -----------------------------------------------------------------------------------------


def test_error_replies_carry_a_kind() -> None:
    assert frames.error_reply(7, "no  such\nthing", "refused") == {
        "id": 7, "ok": False, "error": "no such thing", "kind": "refused"}


@pytest.mark.parametrize("kind, cls", [
    ("refused", errors.RequestError), ("invalid", errors.ConfigError), ("set_aborted", errors.SetAborted),
    ("denied", errors.AccessDenied), ("child_failed", errors.ChildFailed), ("io", errors.IOFailed),
    ("diff_area", errors.DiffAreaError), ("protocol", errors.ProtocolError),
])
def test_from_wire_gives_the_class_registered_for_the_kind(kind: str,
                                                           cls: type[errors.ShadowfsError]) -> None:
    exc = errors.from_wire("what went wrong", kind)
    assert type(exc) is cls and str(exc) == "what went wrong" and exc.kind == kind


def test_from_wire_keeps_an_unknown_kind_in_a_remote_error() -> None:
    for kind, kept in (("from-the-future", "from-the-future"), (None, "remote"), (42, "remote"),
                       ("remote", "remote")):
        exc = errors.from_wire("x", kind)
        assert type(exc) is errors.RemoteError and exc.kind == kept
        assert errors.exit_code_of(exc) == EXIT_PROBLEMS


class Peer:
    """A process-local stand-in for the daemon's socket: accepts one connection on
    `<state>/daemon.sock`, reads one request and does `then(sock, request)`."""

    def __init__(self, state: Path, then: Callable[[socket.socket, frames.Frame], None]) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(state / "daemon.sock"))
        self.listener.listen(1)
        self.then = then
        self.got_request = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request, fds = frames.recv_frame(conn)
            frames.close_fds(fds)
            self.got_request.set()
            self.then(conn, request)
            self.done.wait(30)

    def close(self) -> None:
        self.done.set()
        self.thread.join(30)
        self.listener.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket, frames.Frame], None]], Peer]]:
    started: list[Peer] = []

    def start(then: Callable[[socket.socket, frames.Frame], None]) -> Peer:
        started.append(Peer(tmp_path, then))
        return started[-1]

    yield start
    for one in started:
        one.close()


def reply_with(kind: str, message: str = "nope") -> Callable[[socket.socket, frames.Frame], None]:
    def then(conn: socket.socket, request: frames.Frame) -> None:
        frames.send_frame(conn, {"event": "noise"})  # not the reply: the client skips it
        frames.send_frame(conn, frames.error_reply(request["id"], message, kind))
    return then


@pytest.mark.parametrize("kind, cls", [("invalid", errors.ConfigError), ("set_aborted", errors.SetAborted),
                                       ("refused", errors.RequestError)])
def test_the_client_raises_the_class_of_the_kind(tmp_path: Path, peer: Callable[..., Peer], kind: str,
                                                 cls: type[errors.ShadowfsError]) -> None:
    peer(reply_with(kind, "the daemon says no"))
    with pytest.raises(cls, match="^the daemon says no$") as caught:
        client.request(str(tmp_path), {"op": "status"}, timeout=30)
    assert type(caught.value) is cls


def test_the_client_keeps_an_unknown_kind(tmp_path: Path, peer: Callable[..., Peer]) -> None:
    peer(reply_with("brand_new"))
    with pytest.raises(errors.RemoteError) as caught:
        client.request(str(tmp_path), {"op": "status"}, timeout=30)
    assert caught.value.kind == "brand_new"


def test_the_client_when_nobody_answers(tmp_path: Path, peer: Callable[..., Peer]) -> None:
    message = f"^shadowfs daemon is not running on state {tmp_path}$"
    with pytest.raises(errors.DaemonNotRunning, match=message):
        client.request(str(tmp_path), {"op": "status"})
    peer(lambda conn, request: None)  # reads the request, never replies
    with pytest.raises(errors.CallTimeout,
                       match="no reply to 'status' from the shadowfs daemon within 0.3 s"):
        client.request(str(tmp_path), {"op": "status"}, timeout=0.3)


# ---- the CLI ------------------------------------------------------------------------------------------


def test_daemon_not_running_exits_3_and_says_so_in_json(tmp_path: Path) -> None:
    result = shadowfs("--state", str(tmp_path), "volume", "list", "--json")
    message = one_line_error(result, EXIT_UNREACHABLE)
    assert message == f"shadowfs daemon is not running on state {tmp_path}"
    assert json.loads(result.stdout) == {"error": message, "kind": "not_running", "exit_code": 3}
    assert one_line_error(shadowfs("--state", str(tmp_path), "status"), 3) == message
    assert shadowfs("--state", str(tmp_path), "status").stdout == ""  # JSON only with --json
    result = shadowfs("--state", str(tmp_path), "backup", "--media", str(tmp_path / "m"), "v", "--json")
    assert one_line_error(result, EXIT_UNREACHABLE) == message  # through the requester, still 3
    assert json.loads(result.stdout)["kind"] == "daemon_unavailable"


def test_invalid_input_exits_2_before_anything_is_sent(tmp_path: Path) -> None:
    result = shadowfs("--state", str(tmp_path), "volume", "add", "bad/name", "/tmp", "--json")
    message = one_line_error(result, EXIT_REFUSED)
    assert json.loads(result.stdout) == {"error": message, "kind": "invalid", "exit_code": 2}
    result = shadowfs("--state", str(tmp_path), "snapshot", "delete", "not-a-uuid", "--json")
    assert json.loads(result.stdout)["kind"] == "usage" and result.returncode == 2
    env = {k: v for k, v in os.environ.items() if k != "SHADOWFS_MEDIA"}
    result = shadowfs("media", "list", "--json", env=env)
    assert one_line_error(result, EXIT_REFUSED) == "no backup media: give --media DIR or set $SHADOWFS_MEDIA"
    result = shadowfs("media", "list", "--media", str(tmp_path / "missing"), "--json")
    assert json.loads(result.stdout)["kind"] == "media_not_found" and result.returncode == 2


def test_usage_errors_stay_argparse_with_exit_2(tmp_path: Path) -> None:
    result = shadowfs("--state", str(tmp_path), "volume", "add", "--json")
    assert result.returncode == 2 and "usage: shadowfs" in result.stderr and result.stdout == ""


def test_damaged_media_exits_1(tmp_path: Path) -> None:
    from shadowfs.backup.engine import BackupRequest, VolumeSource, backup

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data" * 100)
    media = str(tmp_path / "media")
    image = backup(BackupRequest(media, {"vol": VolumeSource(str(tmp_path / "src"))}, "full"))
    sound = shadowfs("media", "verify", "--media", media, "--json")
    assert sound.returncode == 0
    # progress as backup gives it: JSON lines on stderr, the last one says how much was read
    last = json.loads(sound.stderr.splitlines()[-1])
    assert last["progress"] == "verify" and last["done"] is True
    assert last["files"] >= 3 and last["bytes"] >= 400  # image.json, manifest, pack, the file's blob
    with open(os.path.join(media, image, "data", "000000.pack"), "r+b") as pack:
        pack.write(b"X")
    result = shadowfs("media", "verify", "--media", media, "--json")
    assert result.returncode == EXIT_PROBLEMS and not json.loads(result.stdout)["ok"]


def test_a_refusal_reaches_the_cli_as_its_class(tmp_path: Path, peer: Callable[..., Peer]) -> None:
    peer(reply_with("set_aborted", "snapshot set aborted: writer 'w' vetoed"))
    result = shadowfs("--state", str(tmp_path), "snapshot", "create", "a", "--json")
    assert one_line_error(result, EXIT_PROBLEMS) == "snapshot set aborted: writer 'w' vetoed"
    assert json.loads(result.stdout)["kind"] == "set_aborted"


def test_closed_without_a_reply_exits_3(tmp_path: Path, peer: Callable[..., Peer]) -> None:
    peer(lambda conn, request: conn.shutdown(socket.SHUT_RDWR))
    result = shadowfs("--state", str(tmp_path), "status", "--json")
    message = one_line_error(result, EXIT_UNREACHABLE)
    assert message == "shadowfs daemon closed the connection without replying"
    assert json.loads(result.stdout)["kind"] == "closed"


def test_sigint_while_waiting_for_the_daemon_exits_130(tmp_path: Path, peer: Callable[..., Peer]) -> None:
    waiting = peer(lambda conn, request: None)
    proc = subprocess.Popen(SHADOWFS + ["--state", str(tmp_path), "status", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert waiting.got_request.wait(60), "the CLI never sent its request"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert err.splitlines() == ["shadowfs: interrupted"]
    assert json.loads(out) == {"error": "interrupted", "kind": "interrupted", "exit_code": 130}


# ---- imports ------------------------------------------------------------------------------------------


def test_engines_never_import_the_cli() -> None:
    code = ("import sys\n"
            "import shadowfs.backup.job, shadowfs.backup.engine, shadowfs.restore.engine\n"
            "import shadowfs.vss.requester, shadowfs.vss.writer, shadowfs.vss.sqlite_writer\n"
            "import shadowfs.backup, shadowfs.restore, shadowfs.vss\n"
            "print(sorted(m for m in sys.modules if m == 'shadowfs.cli' or m.startswith('shadowfs.cli.')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_imports_neither_trio_nor_pyfuse3() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "shadowfs", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "shadowfs.cli.main" in imported
    assert not [m for m in imported if m.split(".")[0] in ("trio", "pyfuse3")]


def test_the_cli_spells_out_the_backup_types_of_the_media() -> None:
    from shadowfs import media
    from shadowfs.cli import backup_cmd

    assert backup_cmd.BACKUP_TYPES == media.BACKUP_TYPES
