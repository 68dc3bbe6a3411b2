"""The CLI's error contract, run as a real subprocess.

Every failure is one line `shadowfs: ...` on stderr and the exit code of its class (2 refused,
3 daemon not running); usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def shadowfs(*args: str, env: dict[str, str] | None = None,
             cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shadowfs", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str, code: int) -> None:
    assert result.returncode == code, result
    if "--json" in result.args:  # the error, also as the one JSON object on stdout
        assert json.loads(result.stdout)["exit_code"] == code, result.stdout
    else:
        assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shadowfs: "), lines[0]
    assert message in lines[0], lines[0]


COMMANDS = [
    ["status"], ["status", "--json"], ["volume", "list"], ["volume", "list", "--json"],
    ["volume", "add", "data", "/tmp"], ["volume", "remove", "data"], ["volume", "remove", "data", "--force"],
    ["snapshot", "create", "a", "b", "--json"], ["snapshot", "list", "--json"],
    ["snapshot", "delete", "8a0e8c0e-2a4c-4a43-9d7e-2b0a3f7c9b11"],
    ["status", "--wait", "--timeout", "0.3"],  # waits for a daemon that just started, not for none
    ["samba", "home"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_no_daemon(tmp_path: Path, command: list[str]) -> None:
    result = shadowfs("--state", str(tmp_path), *command)
    assert_one_line_error(result, f"shadowfs daemon is not running on state {tmp_path}", 3)


def test_state_option_after_the_command_and_from_the_environment(tmp_path: Path) -> None:
    result = shadowfs("volume", "list", "--state", str(tmp_path / "after"))
    assert_one_line_error(result, f"not running on state {tmp_path / 'after'}", 3)
    env = {**os.environ, "SHADOWFS_STATE": str(tmp_path / "env")}
    assert_one_line_error(shadowfs("status", env=env), f"not running on state {tmp_path / 'env'}", 3)
    assert_one_line_error(shadowfs("--state", "rel", "status", cwd=str(tmp_path)),
                          f"not running on state {tmp_path / 'rel'}", 3)


def test_stale_socket_file_means_not_running(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "daemon.sock"))
    stale.close()  # the file stays, nobody listens
    assert_one_line_error(shadowfs("--state", str(tmp_path), "status"), "shadowfs daemon is not running", 3)


@pytest.mark.parametrize("args, message", [
    (["volume", "add", "a/b", "/tmp"], "invalid volume name 'a/b': must not contain '/'"),
    (["volume", "add", "..", "/tmp"], "invalid volume name '..'"),
    (["volume", "add", "", "/tmp"], "volume name must not be empty"),
    (["volume", "add", "x" * 65, "/tmp"], "longer than 64 characters"),
    (["volume", "add", "sp ace", "/tmp"], "only letters, digits"),
    (["volume", "add", "ok", "/tmp", "--max-diff-area", "10X"], "invalid size '10X'"),
    (["volume", "add", "ok", "/tmp", "--max-diff-area", "0"], "must be more than 0 bytes"),
    (["volume", "remove", "a/b"], "must not contain '/'"),
    (["snapshot", "create", "good", "bad/name"], "invalid volume name 'bad/name'"),
    (["snapshot", "delete", "not-a-uuid"], "invalid snapshot or set id 'not-a-uuid'"),
    (["snapshot", "create"], "name the volumes of the set, or give --all"),
    (["snapshot", "create", "a", "--all"], "give volume names or --all, not both"),
])
def test_bad_input_is_rejected_before_connecting(tmp_path: Path, args: list[str], message: str) -> None:
    assert_one_line_error(shadowfs("--state", str(tmp_path), *args), message, 2)


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["volume"], ["volume", "add", "only-name"], ["snapshot", "delete"],
    ["volume", "list", "--no-such-flag"],
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = shadowfs("--state", str(tmp_path), *args)
    assert result.returncode == 2, result
    assert "usage: shadowfs" in result.stderr


def test_help_documents_the_default_diff_area(tmp_path: Path) -> None:
    result = shadowfs("volume", "add", "--help")
    assert result.returncode == 0
    assert "10% of the backing" in " ".join(result.stdout.split())


def test_second_daemon_on_a_locked_state_dir(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from shadowfs import statedir\n"
        "lock = statedir.DaemonLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)\n"
    ), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = shadowfs("daemon", "--state", str(tmp_path), "--mount-root", str(tmp_path / "mnt"))
        assert_one_line_error(result, f"another shadowfs daemon is running on state {tmp_path} "
                                      f"(pid {holder.pid})", 2)
    finally:
        holder.kill()
        holder.wait()


def test_a_user_without_root_is_told_root_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon refuses to start without root, saying so (not a filesystem error later on); the
    uid is pretended here: this machine's interpreter is not readable by another user."""
    from shadowfs.cli.main import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["daemon", "--state", str(tmp_path / "state")]) == 2
    assert "shadowfs: shadowfs daemon needs root" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before anything was made
