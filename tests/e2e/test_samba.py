"""Windows Previous Versions through a real Samba server (design §5.6).

smbd on 127.0.0.1 shares a volume with the section `shadowfs samba` prints (vfs_shadow_copy2 on the
browser's ``by-volume/<volume>``); smbclient's ``allinfo`` lists every snapshot of the volume as a
previous version, ``get @GMT-.../file`` fetches each version's content and a file deleted since, two
sets taken within one second are two versions that both open, and a deleted set's version is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import DaemonRun

PASSWORD = "shadowfs-test"


def _unusable() -> str | None:
    for tool in ("smbd", "smbclient", "smbpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tools/_setup.sh installs samba, samba-vfs-modules, smbclient)"
    build = subprocess.run(["smbd", "-b"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"MODULESDIR:\s*(\S+)", build)
    if found is None or not os.path.exists(os.path.join(found.group(1), "vfs", "shadow_copy2.so")):
        return "Samba's vfs_shadow_copy2 module is not installed (package samba-vfs-modules)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Samba:
    port: int
    share: str

    def client(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["smbclient", f"//127.0.0.1/{self.share}", "-p", str(self.port),
                                 "-U", f"root%{PASSWORD}", "-c", command],
                                capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert result.returncode == 0, f"smbclient -c {command!r}: {result.stdout}{result.stderr}"
        return result

    def versions(self, name: str) -> list[str]:
        return re.findall(r"^(@GMT-\S+)", self.client(f"allinfo {name}").stdout, re.MULTILINE)

    def get(self, path: str, into: Path) -> bytes:
        into.unlink(missing_ok=True)
        self.client(f"get {path} {into}")
        return into.read_bytes()


def _global_section(base: Path, port: int) -> str:
    dirs = {key: base / key for key in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return f"""[global]
    smb ports = {port}
    interfaces = lo
    bind interfaces only = yes
    server role = standalone server
    passdb backend = tdbsam:{dirs['private'] / 'passdb.tdb'}
    private dir = {dirs['private']}
    lock directory = {dirs['lock']}
    state directory = {dirs['state']}
    cache directory = {dirs['cache']}
    pid directory = {dirs['pid']}
    ncalrpc dir = {dirs['ncalrpc']}
    log file = {dirs['log'] / 'smbd.log'}
    log level = 1
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
"""


def _wait_listening(port: int, smbd: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if smbd.poll() is not None:
            output = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"smbd exited with {smbd.returncode}: {output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("smbd did not listen within 30 s")


@pytest.fixture
def samba(daemon: DaemonRun, tmp_path: Path) -> Iterator[Samba]:
    reason = _unusable()
    if reason is not None:
        pytest.skip(reason)
    daemon.add_volume("office")
    daemon.wait_ready()
    port = _free_port()
    base = tmp_path / "samba"
    section = daemon.cli("samba", "office", "--json")["text"]
    conf = base / "smb.conf"
    base.mkdir()
    conf.write_text(_global_section(base, port) + section)
    subprocess.run(["smbpasswd", "-c", str(conf), "-s", "-a", "root"], input=f"{PASSWORD}\n{PASSWORD}\n",
                   text=True, capture_output=True, check=True)
    log = base / "smbd.out"
    with open(log, "wb") as out:
        # a session of its own: the connection processes smbd forks are stopped with it
        smbd = subprocess.Popen(["smbd", "--foreground", "--no-process-group", "-s", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(port, smbd, log)
        yield Samba(port, "office")
    finally:
        try:
            os.killpg(smbd.pid, signal.SIGTERM)
            smbd.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(smbd.pid, signal.SIGKILL)
            smbd.wait()
        try:
            os.killpg(smbd.pid, signal.SIGKILL)  # any connection process left behind
        except ProcessLookupError:
            pass


def _versions_by_set(daemon: DaemonRun) -> dict[str, str]:
    return {s["set_id"]: s["previous_version"] for s in daemon.cli("snapshot", "list", "--json")
            if s["volume"] == "office"}


def _created_second(daemon: DaemonRun, set_id: str) -> str:
    created = next(s["created"] for s in daemon.cli("snapshot", "list", "--json") if s["set_id"] == set_id)
    return str(created)[:19]


def test_previous_versions_through_smbd(daemon: DaemonRun, samba: Samba, tmp_path: Path) -> None:
    volume = daemon.base / "vol-office"
    (volume / "doomed.txt").write_bytes(b"deleted after the first set\n")
    (volume / "keep.txt").write_bytes(b"version 0\n")
    contents = {daemon.snapshot("office")["set_id"]: b"version 0\n"}
    (volume / "doomed.txt").unlink()
    # sets in quick succession until two fall within one second (the first pair, nearly always)
    previous = next(iter(contents))
    same_second: tuple[str, str] | None = None
    for number in range(1, 30):
        (volume / "keep.txt").write_bytes(f"version {number}\n".encode())
        set_id = daemon.snapshot("office")["set_id"]
        contents[set_id] = f"version {number}\n".encode()
        if number > 1 and _created_second(daemon, set_id) == _created_second(daemon, previous):
            same_second = (previous, set_id)
            break
        previous = set_id
    assert same_second is not None, "no two sets within one second in 29 tries"
    names = _versions_by_set(daemon)
    assert names[same_second[0]] != names[same_second[1]]
    assert len(set(names.values())) == len(names) == len(contents)

    listed = samba.versions("keep.txt")
    assert sorted(listed) == sorted(names.values())
    got = tmp_path / "got"
    for set_id, content in contents.items():
        assert samba.get(f"{names[set_id]}/keep.txt", got) == content, set_id
    first = next(iter(contents))
    assert samba.get(f"{names[first]}/doomed.txt", got) == b"deleted after the first set\n"
    assert samba.client("get doomed.txt " + str(got), check=False).returncode != 0  # gone from the live share
    assert samba.get("keep.txt", got) == f"version {len(contents) - 1}\n".encode()

    # a deleted set's version leaves the list; the others keep their names
    daemon.cli("snapshot", "delete", same_second[1])
    assert _versions_by_set(daemon) == {k: v for k, v in names.items() if k != same_second[1]}
    assert sorted(samba.versions("keep.txt")) == sorted(v for k, v in names.items() if k != same_second[1])
    assert samba.client(f"get {names[same_second[1]]}/keep.txt {got}", check=False).returncode != 0


def test_samba_share_text_and_errors(daemon: DaemonRun) -> None:
    """What `shadowfs samba` prints needs no smbd: the browser's by-volume directory of the volume,
    the volume's path, and clear errors for an unknown volume or a bad share name."""
    volume = daemon.add_volume("office")
    daemon.wait_ready()
    reply = daemon.cli("samba", "office", "--share", "Office Files", "--json")
    options = reply["options"]
    assert reply["text"].startswith("[Office Files]\n")
    assert options["path"] == options["shadow:mountpoint"] == str(volume)
    assert options["shadow:snapdir"] == str(daemon.mount_root / "snapshots" / "by-volume" / "office")
    assert os.path.isdir(options["shadow:snapdir"])
    for args, message in ((["nosuch"], "no volume named 'nosuch'"),
                          (["office", "--share", "a]b"], "a share name is")):
        result = daemon.cli("samba", *args, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
