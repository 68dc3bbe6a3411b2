"""Who changed what (design §3.14), through the real daemon, a real live mount and real programs run as two
other users: `shadowfs diff --json` (between snapshots and against the live volume) and `shadowfs blame`
name, for each changed path, the uid, gid, command and pid of the program that made its first change
after the snapshot.

One user has a passwd entry (a system user the fixture adds and removes again), the other is only a uid
and gid (`setpriv`), so the first has a user name in the output and the second none. The daemon runs in a
directory of its own under /tmp that other users may search (a test's tmp_path is private to root)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shadowfs.linux import mounts
from tests.daemon.test_daemon import cli_error, mounts_under
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    name: str | None  # None: a uid without a passwd entry
    uid: int
    gid: int

    def run(self, *command: str, cwd: Path) -> int:
        """Run `command` as this user (no supplementary groups) in `cwd`, found on the system's PATH; the
        pid of the program it ran (setpriv execs it in its own process)."""
        proc = subprocess.Popen(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                                 "--", *command], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": SYSTEM_PATH, "LC_ALL": "C"})
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (command, out, err)
        return proc.pid


def _free_id(taken: Any, start: int) -> int:
    """An id from `start` on that `taken` (pwd.getpwuid, grp.getgrgid) does not know."""
    for candidate in range(start, start + 5000):
        try:
            taken(candidate)
        except KeyError:
            return candidate
    raise RuntimeError("no free id")


@pytest.fixture
def users() -> Iterator[tuple[User, User]]:
    """A system user added for the test (removed again) and a bare uid:gid with no names."""
    name = f"sfsprov{os.getpid() % 100000}"
    subprocess.run(["userdel", name], check=False, capture_output=True)  # left by a run that was killed
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        bare = User(None, _free_id(pwd.getpwuid, 61000), _free_id(grp.getgrgid, 61000))
        yield User(name, entry.pw_uid, entry.pw_gid), bare
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)  # if userdel left it


@pytest.fixture
def open_daemon() -> Iterator[DaemonRun]:
    """A daemon (tests/support/daemon.py) in a directory other users may search."""
    base = Path(tempfile.mkdtemp(prefix="shadowfs-provenance-", dir="/tmp"))
    os.chmod(base, 0o755)
    run = DaemonRun(base)
    try:
        run.start()
        yield run
    finally:
        run.cleanup()
        left = sorted(mounts_under(base), key=len, reverse=True)
        for point in left:
            mounts.unmount(point)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"FUSE mounts left behind (now unmounted): {left}"


def _by_path(changes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {change["path"]: change for change in changes}


def test_diff_and_blame_name_the_user_and_program_of_each_change(open_daemon: DaemonRun,
                                                                 users: tuple[User, User]) -> None:
    daemon = open_daemon
    alice, bob = users
    volume = daemon.add_volume("p")
    daemon.wait_ready()
    shared = volume / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    owners = {"a.txt": alice, "b.txt": bob, "c.txt": alice, "d.txt": bob, "e.txt": alice, "g.txt": bob,
              "t.txt": bob}
    for name, owner in owners.items():
        (shared / name).write_text(f"{name}\n")
        os.chown(shared / name, owner.uid, owner.gid)
    os.chmod(shared / "t.txt", 0o666)
    first = daemon.snapshot("p")["snapshots"][0]

    # the first change in shared/ is bob's: the directory's own change is his
    pids = {"new.txt": bob.run("sh", "-c", "echo new > shared/new.txt", cwd=volume),
            "a.txt": alice.run("dd", "if=/dev/zero", "of=shared/a.txt", "bs=1", "count=3", "conv=notrunc",
                               "status=none", cwd=volume),
            "b.txt": bob.run("python3", "-c", "f = open('shared/b.txt', 'r+'); f.write('x'); f.close()",
                             cwd=volume),
            "e2.txt": alice.run("mv", "shared/e.txt", "shared/e2.txt", cwd=volume),
            "d.txt": bob.run("rm", "shared/d.txt", cwd=volume),
            "c.txt": alice.run("chmod", "600", "shared/c.txt", cwd=volume),
            "t.txt": alice.run("touch", "shared/t.txt", cwd=volume),
            "g.txt": bob.run("cp", "shared/b.txt", "shared/g.txt", cwd=volume)}
    bob.run("sh", "-c", "echo later >> shared/t.txt", cwd=volume)  # not t.txt's first change: not recorded
    expected = {  # path: (change, user, command, request)
        "shared/new.txt": ("created", bob, "sh", "create"),
        "shared/a.txt": ("modified", alice, "dd", "write"),
        "shared/b.txt": ("modified", bob, "python3", "write"),
        "shared/e2.txt": ("renamed", alice, "mv", "rename"), "shared/d.txt": ("deleted", bob, "rm", "unlink"),
        "shared/c.txt": ("modified", alice, "chmod", "setattr"),
        "shared/t.txt": ("modified", alice, "touch", "setattr"),
        "shared/g.txt": ("modified", bob, "cp", "truncate"), "shared": ("modified", bob, "sh", "create")}
    pids["shared"] = pids["new.txt"]

    def check(changes: list[dict[str, Any]]) -> None:
        found = _by_path(changes)
        assert set(expected) <= set(found), sorted(found)
        for path, (change, user, command, op) in expected.items():
            who = found[path]["who"]
            assert found[path]["change"] == change, found[path]
            assert (who["uid"], who["gid"], who["comm"], who["op"]) == (user.uid, user.gid, command, op), path
            assert who["pid"] == pids[path.removeprefix("shared/") if path != "shared" else path], path
            assert who.get("user") == user.name, path

    live = daemon.cli("diff", first["id"], "--live", "--json")["changes"]
    check(live)
    second = daemon.snapshot("p")["snapshots"][0]
    between = daemon.cli("diff", first["id"], second["id"], "--json")["changes"]
    check(between)
    assert between == live
    assert _by_path(between)["shared/e2.txt"]["from"] == "shared/e.txt"
    text = daemon.cli("diff", first["id"], second["id"]).stdout
    assert f"by {alice.name} ({alice.uid}:{alice.gid}) dd[{pids['a.txt']}]" in text
    assert f"by ({bob.uid}:{bob.gid}) rm[{pids['d.txt']}]" in text

    # blame: the file's one change, then a later one by another program, newest last
    later = alice.run("python3", "-c", "open('shared/a.txt', 'r+').write('y')", cwd=volume)
    blamed = daemon.cli("blame", str(shared / "a.txt"), "--json")
    assert (blamed["volume"], blamed["path"], blamed["since"]) == ("p", "shared/a.txt", None)
    assert [(c["object"], c["since"], c["until"], c.get("data"), c["who"]["comm"], c["who"]["pid"])
            for c in blamed["changes"]] == [
        ("attributes", first["id"], second["id"], True, "dd", pids["a.txt"]),
        ("attributes", second["id"], "live", True, "python3", later)]
    since = daemon.cli("blame", str(shared / "a.txt"), "--since", second["id"][:8], "--json")
    assert [c["who"]["pid"] for c in since["changes"]] == [later] and since["since"] == second["id"]
    in_snapshot = daemon.cli("blame", str(Path(first["path"], "shared", "a.txt")), "--json")
    assert in_snapshot["changes"] == blamed["changes"]

    # a directory: its own change and those of its entries
    listed = daemon.cli("blame", str(shared), "--json")["changes"]
    entries = {(c["path"], c.get("before")): c["who"]["comm"] for c in listed if c["object"] == "entry"}
    assert entries == {("shared/new.txt", "absent"): "sh", ("shared/e.txt", "file"): "mv",
                       ("shared/e2.txt", "absent"): "mv", ("shared/d.txt", "file"): "rm"}
    assert [c["who"]["comm"] for c in listed if c["object"] == "attributes"] == ["sh"]
    deleted = daemon.cli("blame", str(shared / "d.txt"), "--json")["changes"]  # gone now, in the snapshot
    assert [(c["object"], c["who"]["comm"]) for c in deleted] == [("attributes", "rm"), ("entry", "rm")]
    table = daemon.cli("blame", str(shared / "a.txt")).stdout
    assert f"{alice.name}({alice.uid})" in table and f"python3[{later}]" in table

    assert "is not inside a volume" in cli_error(daemon, "blame", "/", code=2)
    assert "names nothing in volume p" in cli_error(daemon, "blame", str(shared / "never"), code=2)
