"""The systemd units `shadowfs systemd install` writes: they verify with systemd-analyze, keep a
state path with spaces and percent signs one argument, give the daemon Type=notify and
KillMode=process, and let the timeline prune only its own sets; a bad schedule writes nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shadowfs.cli import systemd_units

SHADOWFS = [sys.executable, "-m", "shadowfs"]


def install(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHADOWFS, "systemd", "install", "--dir", str(tmp_path / "units"), *extra],
                          capture_output=True, text=True, check=False)


def test_the_units_verify_and_say_what_they_run(tmp_path: Path) -> None:
    state = str(tmp_path / "state dir 100%")
    done = install(tmp_path, "--state", state, "--volume", "db", "--on-calendar", "*:0/15",
                   "--keep-last", "4", "--keep-daily", "7", "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    units = tmp_path / "units"
    assert sorted(p.name for p in units.iterdir()) == sorted(
        [systemd_units.DAEMON_UNIT, systemd_units.SNAPSHOT_UNIT, systemd_units.TIMER_UNIT])
    daemon = (units / systemd_units.DAEMON_UNIT).read_text()
    assert "Type=notify" in daemon and "KillMode=process" in daemon
    assert f'--state "{state.replace("%", "%%")}" --log-level debug' in daemon
    snapshot = (units / systemd_units.SNAPSHOT_UNIT).read_text()
    create, prune = [line for line in snapshot.splitlines() if line.startswith("ExecStart=")]
    assert create.endswith("snapshot create --state " + f'"{state.replace("%", "%%")}"'
                           + " --label timeline db")
    assert prune.endswith("--label timeline --keep-last 4 --keep-daily 7")
    assert "OnCalendar=*:0/15" in (units / systemd_units.TIMER_UNIT).read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were written but not verified")
    files = [str(units / name) for name in (systemd_units.DAEMON_UNIT, systemd_units.SNAPSHOT_UNIT,
                                            systemd_units.TIMER_UNIT)]
    verified = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, check=False)
    # systemd-analyze exits 0 on many complaints (an unknown key, a bad value): none may be printed
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def test_a_bad_schedule_or_no_rule_writes_nothing(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is not None:
        done = install(tmp_path, "--on-calendar", "every blue moon")
        assert done.returncode == 2 and "not a systemd calendar spec" in done.stderr
        assert not (tmp_path / "units").exists()
    with pytest.raises(ValueError, match="at least one --keep"):
        systemd_units.render(systemd_units.Installation(command=["shadowfs"], state="/s", mount_root=None,
                                                        keep={}))


@pytest.mark.parametrize(("word", "quoted"), [("/plain/path", "/plain/path"), ("a b", '"a b"'),
                                              ("50%", '"50%%"'), ('say "hi"', '"say \\"hi\\""'),
                                              ("$HOME", '"$$HOME"')])
def test_arguments_are_quoted_for_systemd(word: str, quoted: str) -> None:
    assert systemd_units.quote(word) == quoted
