"""Express writers (`shadowfs writer run --manifest`) as real processes against a real daemon.

A writer whose every event command appends its event and SHADOWFS_* environment to a log: a full
backup through `shadowfs backup` runs the commands in the order of vss §2 (Identify,
PrepareForBackup, PrepareForSnapshot, Freeze, Thaw, PostSnapshot, BackupComplete, BackupShutdown),
each with the set, volumes, components and backup type of its event; a restore of a chain runs
PreRestore / PostRestore per image with "additional restores" set on all but the last (vss §3).
A Freeze command that hangs is killed with its whole process group at its timeout: the set is
aborted, the writer is failed_at_freeze with `timeout`, the thaw command runs for Abort, and no
process of the command is left. Exit 75 is a retryable failure, any other a non-retryable one.
Manifest errors without a daemon: tests/unit/test_express_manifest.py.
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

from tests.support.daemon import DaemonRun
from tests.support.writers import ROOT, WriterProcs, writer_procs

pytestmark = pytest.mark.fuse

LOG_EVENT = ROOT / "tests" / "support" / "writers" / "log_event.py"
ALL_EVENTS = ("identify", "prepare_backup", "prepare_snapshot", "freeze", "thaw", "post_snapshot", "abort",
              "backup_complete", "backup_shutdown", "pre_restore", "post_restore")


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)


def cli(daemon: DaemonRun, *args: str, check: bool = True) -> Any:
    result = subprocess.run([sys.executable, "-m", "shadowfs", *args], env=daemon.env, capture_output=True,
                            text=True, timeout=300, check=False, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
        return json.loads(result.stdout) if "--json" in args else result
    return result


def write_manifest(daemon: DaemonRun, files: Path, log: Path, *, freeze: str = "",
                   freeze_timeout: float | None = None, without: tuple[str, ...] = ()) -> Path:
    """A manifest with one file group over `files` whose every event command (but those `without`)
    logs to `log`; `freeze` goes before the Freeze command's logging, which may have its own timeout."""
    commands = {event: f"{sys.executable} {LOG_EVENT} {log} {event}" for event in ALL_EVENTS
                if event not in without}
    if freeze:
        commands["freeze"] = f"{freeze}\n{commands['freeze']}"
    lines = [f"{event} = {json.dumps(command)}" for event, command in commands.items()]
    if freeze_timeout is not None:
        lines = [f"freeze = {{ command = {json.dumps(commands['freeze'])}, timeout = {freeze_timeout} }}"
                 if line.startswith("freeze =") else line for line in lines]
    path = daemon.base / "logger.toml"
    events = "\n".join(lines)
    path.write_text(f"""
[writer]
name = "logger"
backup_schema = ["differential", "incremental", "copy"]

[[component]]
name = "files"
caption = "what the logger declares"

[[component.file]]
path = "{files}"
spec = "*"
recursive = true

[events]
timeout = 30
{events}
""")
    return path


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_backup_and_restore_run_the_commands_in_the_vss_order(daemon: DaemonRun, writers: WriterProcs,
                                                              tmp_path: Path) -> None:
    volume = daemon.add_volume("data")
    daemon.wait_ready()
    files = volume / "files"
    files.mkdir()
    (files / "a.txt").write_text("first")
    log = tmp_path / "events.jsonl"
    writers.start_express("logger", write_manifest(daemon, files, log))
    registered = writers.wait_registered("logger")["logger"]
    assert registered["state"] == "stable"
    store = str(tmp_path / "media")

    full = cli(daemon, "backup", "--media", store, "--type", "full", "data", "--keep-snapshot", "--json")
    assert [c["component"] for c in full["components"]] == ["files"]
    seen = records(log)
    assert [r["event"] for r in seen] == ["identify", "prepare_backup", "prepare_snapshot", "freeze", "thaw",
                                          "post_snapshot", "backup_complete", "backup_shutdown"]
    by_event = {r["event"]: r["env"] for r in seen}
    for event in ("prepare_backup", "prepare_snapshot", "freeze", "thaw", "post_snapshot", "backup_complete"):
        env = by_event[event]
        assert env["SHADOWFS_EVENT"] == event
        assert env["SHADOWFS_SET_ID"] == full["set_id"], event
        assert env["SHADOWFS_BACKUP_TYPE"] == "full", event
        assert env["SHADOWFS_CONTEXT"] == "client_accessible_writers", event  # a kept set (vss §14.1)
        assert env["SHADOWFS_COMPONENTS"] == "files", event
        assert env["SHADOWFS_WRITER_NAME"] == "logger"
        assert env["SHADOWFS_INSTANCE_ID"] == registered["instance_id"]
    for event in ("prepare_snapshot", "freeze", "thaw", "post_snapshot"):
        assert str(volume) in by_event[event]["SHADOWFS_VOLUMES"].split("\n"), by_event[event]
    assert by_event["identify"]["SHADOWFS_SESSION"] == ""
    assert by_event["backup_shutdown"]["SHADOWFS_SET_ID"] == ""
    assert len({r["env"]["SHADOWFS_SESSION"] for r in seen if r["event"] != "identify"}) == 1
    for record in seen:  # each command leads a session and process group of its own
        assert record["pgid"] == record["sid"] != os.getsid(0)

    (files / "b.txt").write_text("second")
    inc = cli(daemon, "backup", "--media", store, "--type", "incremental", "data", "--json")
    assert inc["base"] == full["image"]
    after_inc = records(log)[len(seen):]
    assert [r["event"] for r in after_inc] == ["identify", "prepare_backup", "prepare_snapshot", "freeze",
                                               "thaw", "post_snapshot", "backup_complete", "backup_shutdown"]
    assert {r["env"]["SHADOWFS_BACKUP_TYPE"] for r in after_inc if r["event"] == "freeze"} == {"incremental"}

    before = len(records(log))
    out = tmp_path / "out"
    cli(daemon, "restore", "--media", store, "--image", inc["image"], "--to", str(out), "--json")
    assert (out / "data" / "files" / "b.txt").read_text() == "second"
    restore = records(log)[before:]
    # the chain is two restores: more restores follow the first (vss §3), none the second
    additional = [(r["event"], r["env"]["SHADOWFS_ADDITIONAL_RESTORES"]) for r in restore[1:]]
    assert additional == [("pre_restore", "1"), ("post_restore", "1"), ("pre_restore", "0"),
                          ("post_restore", "0"), ("backup_shutdown", "0")]
    assert restore[0]["event"] == "identify"
    assert all(r["env"]["SHADOWFS_COMPONENTS"] == "files" for r in restore if "restore" in r["event"])
    # each image's restore events carry its saved document, so the set that image was taken from
    assert [r["env"]["SHADOWFS_SET_ID"] for r in restore if "restore" in r["event"]] == \
        [full["set_id"]] * 2 + [inc["set_id"]] * 2
    status = {w["writer_name"]: w for w in cli(daemon, "writers", "--json")}
    assert status["logger"]["state"] == "stable" and status["logger"]["last_failure"] is None


def group_members(pgid: int) -> list[str]:
    """The processes of a process group that are still running (zombies count as gone)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{entry} {stat[stat.index('(') + 1:stat.rindex(')')]} {fields[0]}")
    return found


def left_after_kill(pgid: int) -> list[str]:
    """The group's members still running once SIGKILL has had a moment to land (the writer reaps only
    the group's leader; the others die on their own)."""
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return group_members(pgid)


def test_a_hanging_freeze_is_killed_at_its_timeout_and_exit_codes_map_to_failures(
        daemon: DaemonRun, writers: WriterProcs, tmp_path: Path) -> None:
    volume = daemon.add_volume("data")
    daemon.wait_ready()
    files = volume / "files"
    files.mkdir()
    log, pidfile, hang, busy = (tmp_path / n for n in ("events.jsonl", "freeze.pid", "hang", "busy"))
    freeze = (f"if [ -e {hang} ]; then echo $$ > {pidfile}; sleep 1000; echo never; fi\n"
              f"if [ -e {busy} ]; then echo 'the application is busy, try later' >&2; exit 75; fi")
    # the Freeze command may take 2 s; the writer's freeze window (60 s) is far longer. Without an
    # abort command, Abort runs the thaw command.
    path = write_manifest(daemon, files, log, freeze=freeze, freeze_timeout=2, without=("abort",))
    writers.start_express("logger", path)
    writers.wait_registered("logger")

    hang.touch()
    result = cli(daemon, "snapshot", "create", "data", "--json", check=False)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["kind"] == "set_aborted"
    [status] = [w for w in cli(daemon, "writers", "--json") if w["writer_name"] == "logger"]
    assert status["state"] == "failed_at_freeze" and status["failure"] == "timeout", status
    message = status["last_failure"]["message"]
    assert "freeze command did not finish within 2 s" in message and "killed" in message, message
    assert left_after_kill(int(pidfile.read_text())) == [], "the Freeze command outlived its timeout"
    # no Freeze line: its command never got there; Abort ran the thaw command
    assert steps(log) == [("identify", "identify"), ("prepare_snapshot", "prepare_snapshot"),
                          ("abort", "thaw")]
    assert cli(daemon, "snapshot", "list", "--json") == []
    assert writers.procs["logger"].poll() is None

    hang.unlink()
    busy.touch()
    result = cli(daemon, "snapshot", "create", "data", check=False)
    assert result.returncode == 1
    [status] = [w for w in cli(daemon, "writers", "--json") if w["writer_name"] == "logger"]
    assert status["state"] == "failed_at_freeze" and status["failure"] == "retryable", status
    assert status["last_failure"]["message"] == ("the freeze command exited 75: "
                                                 "the application is busy, try later")

    busy.unlink()
    made = cli(daemon, "snapshot", "create", "data", "--json")
    tail = steps(log)[-4:]
    assert tail == [(e, e) for e in ("prepare_snapshot", "freeze", "thaw", "post_snapshot")], tail
    [post] = [r for r in records(log) if r["env"]["SHADOWFS_SET_ID"] == made["set_id"]
              and r["event"] == "post_snapshot"]
    assert str(volume) in post["env"]["SHADOWFS_VOLUMES"].split("\n")


def steps(log: Path) -> list[tuple[str, str]]:
    """(event, whose command ran) in order; BackupShutdown, sent when a CLI's session has closed,
    is left out (it may come before or after the next command looks)."""
    return [(r["event"], r["command"]) for r in records(log) if r["event"] != "backup_shutdown"]


def test_sigterm_ends_the_writer_and_the_command_it_runs(daemon: DaemonRun, writers: WriterProcs,
                                                          tmp_path: Path) -> None:
    volume = daemon.add_volume("data")
    daemon.wait_ready()
    files = volume / "files"
    files.mkdir()
    log, pidfile = tmp_path / "events.jsonl", tmp_path / "freeze.pid"
    path = write_manifest(daemon, files, log, freeze=f"echo $$ > {pidfile}; sleep 1000")
    writer = writers.start_express("logger", path)
    writers.wait_registered("logger")
    creator = subprocess.Popen([sys.executable, "-m", "shadowfs", "snapshot", "create", "data", "--json"],
                               env=daemon.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and creator.poll() is None, "the Freeze command never ran"
            time.sleep(0.05)
        pgid = int(pidfile.read_text())
        assert group_members(pgid)
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=60) == 0, writers.output("logger")
        assert left_after_kill(pgid) == [], "the Freeze command outlived its writer"
        out, err = creator.communicate(timeout=120)
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
    assert creator.returncode == 1 and json.loads(out)["kind"] == "set_aborted", err
    assert cli(daemon, "snapshot", "list", "--json") == []
    assert "SIGTERM: stopping" in writers.output("logger")
