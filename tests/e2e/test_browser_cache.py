"""The browser's kernel caching, end to end: a real daemon, the CLI, the real browser.

The browser's virtual entries (set directories, ``by-time`` names, a set's
volumes) are cached by the kernel with long timeouts and taken back when sets
come and go. These tests look at the browser by path only (stat, readlink),
never by listing a directory first (a listing would reach the browser and make
it look again), so they see what the kernel's cache says:

- a set deleted with ``snapshot delete`` is gone from every path at once, a new
  one is there at once, and every ``by-time`` name points where the snapshot
  records say, after each create and delete;
- what a snapshot shows (attributes, xattrs) is that of its instant, also after
  the live files changed, whether or not it was looked at before the change.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shadowfs.browser.volumes import SnapshotSet, by_time_names, parse_created
from shadowfs.manifest import differences, manifest
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse


def _browser(run: DaemonRun) -> Path:
    return run.mount_root / "snapshots"


def _expected_by_time(run: DaemonRun) -> dict[str, str]:
    """by-time name -> set id, from the snapshot records (as the browser names them)."""
    sets: dict[str, SnapshotSet] = {}
    for record in run.cli("snapshot", "list", "--json"):
        time_name, created_ns = parse_created(record["created"])
        sets.setdefault(record["set_id"], SnapshotSet(record["set_id"], record["created"], created_ns,
                                                      time_name))
    return {os.fsdecode(name): entry.set_id for name, entry in by_time_names(sets).items()}


def _check_paths(run: DaemonRun, alive: list[str], gone: list[str], names_seen: set[str]) -> None:
    """Every path of `alive` sets resolves, none of `gone`; by-time names as the records say."""
    root = _browser(run)
    for set_id in alive:
        assert stat.S_ISDIR(os.lstat(root / set_id).st_mode)
        assert stat.S_ISREG(os.lstat(root / set_id / "data" / "f").st_mode)
    for set_id in gone:
        for path in (root / set_id, root / set_id / "data", root / set_id / "data" / "f"):
            with pytest.raises(FileNotFoundError):
                os.lstat(path)
    expected = _expected_by_time(run)
    for name, set_id in expected.items():
        assert os.readlink(root / "by-time" / name) == f"../{set_id}"
        assert os.lstat(root / "by-time" / name / "data" / "f").st_size > 0
    for name in names_seen - set(expected):
        assert not os.path.lexists(root / "by-time" / name)
    names_seen.update(expected)
    assert os.stat(root).st_nlink == 4 + len(alive)


def _check_versions(run: DaemonRun, alive: list[str], given: dict[str, str]) -> None:
    """by-volume/data names one previous version per live set, as `snapshot list` says; a name once
    given to a set is never shown for another one."""
    root = _browser(run) / "by-volume" / "data"
    expected = {s["previous_version"]: s["set_id"] for s in run.cli("snapshot", "list", "--json")}
    assert sorted(expected.values()) == sorted(alive)
    assert sorted(os.listdir(root)) == sorted(expected)
    for name, set_id in expected.items():
        assert os.readlink(root / name) == f"../../{set_id}/data"
        assert (root / name / "f").read_bytes() == b"first"
        assert given.setdefault(name, set_id) == set_id, f"{name} moved to another set"
    for name in set(given) - set(expected):
        assert not os.path.lexists(root / name)


def test_sets_come_and_go_at_once_by_path(daemon: DaemonRun) -> None:
    backing = daemon.add_volume("data")
    daemon.wait_ready()
    (backing / "f").write_bytes(b"first")
    names_seen: set[str] = set()
    given: dict[str, str] = {}
    alive: list[str] = []
    gone: list[str] = []
    for _ in range(4):  # several sets within a second or two: equal by-time names get suffixes
        alive.append(daemon.snapshot("data")["set_id"])
        _check_paths(daemon, alive, gone, names_seen)
        _check_versions(daemon, alive, given)
    for set_id in (alive[1], alive[0]):
        daemon.cli("snapshot", "delete", set_id)
        alive.remove(set_id)
        gone.append(set_id)
        _check_paths(daemon, alive, gone, names_seen)
        _check_versions(daemon, alive, given)
    alive.append(daemon.snapshot("data")["set_id"])
    _check_paths(daemon, alive, gone, names_seen)
    _check_versions(daemon, alive, given)
    for set_id in list(alive):
        daemon.cli("snapshot", "delete", set_id)
        alive.remove(set_id)
        gone.append(set_id)
        _check_paths(daemon, alive, gone, names_seen)
        _check_versions(daemon, alive, given)


def test_snapshot_keeps_its_instant_attributes_and_xattrs(daemon: DaemonRun) -> None:
    backing = daemon.add_volume("data")
    daemon.wait_ready()
    tree = backing / "tree"
    (tree / "sub").mkdir(parents=True)
    for name in ("seen", "unseen"):
        path = tree / "sub" / name
        path.write_bytes(b"x" * 100)
        os.setxattr(path, "user.kept", b"one")
        os.setxattr(path, "user.removed", b"two")
    os.setxattr(tree / "sub", "user.dir", b"d")
    instant = manifest(str(tree))
    set_id = daemon.snapshot("data")["set_id"]
    snap = _browser(daemon) / set_id / "data" / "tree"
    seen = snap / "sub" / "seen"
    before = os.lstat(seen)
    assert sorted(os.listxattr(seen)) == ["user.kept", "user.removed"]  # looked at: xattrs now known
    assert os.getxattr(seen, "user.kept") == b"one"

    for name in ("seen", "unseen"):
        path = tree / "sub" / name
        os.setxattr(path, "user.kept", b"changed")
        os.removexattr(path, "user.removed")
        os.setxattr(path, "user.added", b"new")
        with open(path, "ab") as f:
            f.write(b"more")
        os.chmod(path, 0o600)
    os.setxattr(tree / "sub", "user.dir", b"changed")

    after = os.lstat(seen)
    assert (after.st_ino, after.st_size, after.st_mode, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino, before.st_size, before.st_mode, before.st_mtime_ns, before.st_ctime_ns)
    for path in (seen, snap / "sub" / "unseen"):
        assert sorted(os.listxattr(path)) == ["user.kept", "user.removed"]
        assert os.getxattr(path, "user.kept") == b"one"
        assert os.getxattr(path, "user.removed") == b"two"
        with pytest.raises(OSError):
            os.getxattr(path, "user.added")
    assert os.getxattr(snap / "sub", "user.dir") == b"d"
    assert not differences(instant, manifest(str(snap)))
    daemon.cli("snapshot", "delete", set_id)
    with pytest.raises(FileNotFoundError):
        os.lstat(seen)


def _lstat_fields(path: Path) -> tuple[int, ...]:
    st = os.lstat(path)
    return (st.st_mode, st.st_size, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns)


def test_path_walks_with_cold_dentries_see_the_instant(daemon: DaemonRun) -> None:
    """stat by absolute path, one name after another (the browser then reads whole directories
    and answers later lookups from them): every object as it was at the instant, names made
    since absent, names removed or replaced since still there as they were."""
    backing = daemon.add_volume("data")
    daemon.wait_ready()
    tree = backing / "tree"
    for d in range(3):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (tree / f"d{d}" / f"f{i}").write_bytes(b"x" * (i + d))
        os.symlink(f"f{d}", tree / f"d{d}" / "link")
    os.link(tree / "d0" / "f1", tree / "d1" / "hard")
    os.setxattr(tree / "d2" / "f3", "user.tag", b"at the instant")
    paths = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    instant = {rel: _lstat_fields(tree / rel) for rel in paths}
    set_id = daemon.snapshot("data")["set_id"]
    snap = _browser(daemon) / set_id / "data" / "tree"

    os.rename(tree / "d0" / "f5", tree / "d2" / "moved")
    os.unlink(tree / "d1" / "f7")
    (tree / "d1" / "f8").unlink()
    (tree / "d1" / "f8").write_bytes(b"a new file under an old name")
    (tree / "d0" / "new").write_bytes(b"made after the instant")
    os.chmod(tree / "d2" / "f9", 0o600)
    os.setxattr(tree / "d2" / "f3", "user.tag", b"changed")
    with open(tree / "d0" / "f1", "ab") as f:
        f.write(b"grown")

    for rel in paths:
        assert _lstat_fields(snap / rel) == instant[rel], rel
    for rel in ("d2/moved", "d0/new"):
        with pytest.raises(FileNotFoundError):
            os.lstat(snap / rel)
    assert os.lstat(snap / "d0" / "f1").st_ino == os.lstat(snap / "d1" / "hard").st_ino
    assert os.readlink(snap / "d1" / "link") == "f1"
    assert os.getxattr(snap / "d2" / "f3", "user.tag") == b"at the instant"
