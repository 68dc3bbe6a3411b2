"""`shadowfs revert` (and `shadowfs versions`) through the real daemon on generated trees with every
kind of object: files, hard links, symlinks, fifos, device nodes, sockets, xattrs and an ACL,
sparse files, renamed directories. Compared with manifests the test takes itself
(`shadowfs.manifest`, no shadowfs code path): a revert leaves 0 differences from the snapshot, a
revert of the revert gives back the state before it, a revert of some paths changes nothing
else, a dry run changes nothing, and failures say what happened and how to go back."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shadowfs import statedir
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import KIND_OF_FMT, BackingIno
from shadowfs.manifest import Manifest, differences
from tests.daemon.test_daemon import cli_error
from tests.support.daemon import SHADOWFS, DaemonRun
from tests.support.treegen import make_tree, mutate, tree_manifest

pytestmark = pytest.mark.fuse


def snapshot_id(daemon: DaemonRun) -> str:
    return str(daemon.snapshot("a")["snapshots"][0]["id"])


def subtree(found: Manifest, top: str, inside: bool) -> Manifest:
    """The entries of `found` at and below `top` (a manifest key such as "./t/docs"), or all others."""
    return {k: v for k, v in found.items() if (k == top or k.startswith(top + "/")) == inside}


def expected_versions(steps: list[Manifest], key: str) -> list[tuple[Any, ...]]:
    """What `versions` must list for manifest key `key`, from manifests taken at each snapshot and
    then live: equal consecutive snapshot looks folded (link counts, ctimes and hard-link groups
    are not part of a version), the live look last on its own."""
    looks = []
    for found in steps:
        entry = found.get(key)
        if entry is None:
            looks.append(("absent",))
            continue
        kind, size, mode, uid, gid, mtime, _, _, rdev, digest, target, xattrs, _ = entry
        names = tuple(sorted(os.path.basename(k) for k in found if os.path.dirname(k) == key))
        looks.append(("present", KIND_OF_FMT[kind], size, mode & 0o7777, uid, gid, mtime, digest or None,
                      target or None, tuple(name for name, _ in xattrs), names if stat.S_ISDIR(kind) else ()))
    folded: list[tuple[Any, ...]] = []
    for look in looks[:-1]:
        if not folded or folded[-1] != look:
            folded.append(look)
    return folded + [looks[-1]]


def shown_versions(daemon: DaemonRun, path: Path) -> list[tuple[Any, ...]]:
    out = []
    names: set[str] = set()
    for item in daemon.cli("versions", str(path), "--json")["versions"]:
        if item["state"] != "present":
            out.append((item["state"],))
            names = set()
            continue
        if item["type"] == "dir":
            names = (names | set(item["entered"])) - set(item["left"])
        out.append(("present", item["type"], item["size"], item["mode"], item["uid"], item["gid"],
                    item["mtime_ns"], item.get("sha256"), item.get("target"), tuple(item["xattrs"]),
                    tuple(sorted(names)) if item["type"] == "dir" else ()))
    return out


def change_first(t: Path) -> None:
    """Every kind of change the revert has to undo, then some random ones."""
    with open(t / "sparse.img", "r+b") as f:  # data where the snapshot has a hole: a copy must undo it
        f.seek(3 << 20)
        f.write(b"\x01" * 70_000)
    with open(t / "docs" / "f8.txt", "ab") as f:
        f.write(b"appended")
    os.truncate(t / "docs" / "f9.txt", 10)
    os.rename(t / "links", t / "empty" / "links-moved")  # a directory with hard links and symlinks in it
    os.link(t / "docs" / "f3.txt", t / "docs" / "f3-hard")
    os.link(t / "empty" / "links-moved" / "a", t / "deep" / "new-link")
    (t / "docs" / "f6.txt").unlink()
    (t / "zeros").unlink()
    subprocess.run(["setfacl", "-m", "u:4321:rw", str(t / "docs" / "f2.txt")], check=True)  # its ACL
    os.setxattr(t / "docs" / "f1.txt", "user.new", b"added")
    os.removexattr(t / "docs" / "f1.txt", "user.color")
    (t / "dev" / "fifo").unlink()
    (t / "dev" / "fifo").write_text("a file where the fifo was")
    os.mkfifo(t / "new-fifo")
    os.chown(t / "docs" / "f5.txt", 3, 4)
    os.chmod(t / "docs" / "f0.txt", 0o600)
    os.rename(t / "docs" / "f7.txt", t / "deep" / "level00" / "f7-moved")
    mutate(str(t / "deep"), random.Random(11), 15)  # random ones where the paths above are not


def change_again(t: Path) -> None:
    os.rename(t / "docs", t / "sticky" / "docs-moved")
    with open(t / "late-sparse", "wb") as f:
        f.truncate(1 << 20)
        f.write(b"head")
    (t / "dev" / "null").unlink()
    os.symlink("elsewhere", t / "dev" / "null")
    mutate(str(t / "empty"), random.Random(12), 15)


def test_revert_to_a_snapshot_and_back_on_a_generated_tree(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    t = a / "t"
    make_tree(str(t), random.Random(5))
    first = snapshot_id(daemon)
    at_first = tree_manifest(str(a))
    links_ino, sparse_blocks = (t / "links").stat().st_ino, (t / "sparse.img").stat().st_blocks
    change_first(t)
    second = snapshot_id(daemon)
    at_second = tree_manifest(str(a))
    change_again(t)
    before = tree_manifest(str(a))
    steps = [at_first, at_second, before]

    for rel in ("t/docs/f1.txt", "t/sparse.img", "t/links", "t/links/a", "t/dev/fifo", "t/docs", "t/zeros"):
        assert shown_versions(daemon, a / rel) == expected_versions(steps, "./" + rel), rel

    dry = daemon.cli("revert", first, "--dry-run", "--json")
    assert dry["dry_run"] and dry["safety"] is None and dry["paths"] == [""]
    assert tree_manifest(str(a)) == before
    assert len(daemon.cli("snapshot", "list", "--json")) == 2
    by_path = {(c["path"], c["change"]): c for c in dry["changes"]}
    assert ("t/links", "renamed") in by_path and ("t/new-fifo", "deleted") in by_path
    assert ("t/zeros", "created") in by_path and by_path[("t/sparse.img", "modified")]["copied"]

    done = daemon.cli("revert", first, "--json")
    assert differences(at_first, tree_manifest(str(a))) == []
    assert done["changes"] == dry["changes"] and not done["dry_run"]
    assert (t / "links").stat().st_ino == links_ino  # moved back, not copied
    assert (t / "sparse.img").stat().st_blocks <= sparse_blocks  # its holes are holes again
    safety = done["safety"]
    listed = {s["id"]: s for s in daemon.cli("snapshot", "list", "--json")}
    made = listed[safety["snapshot"]]
    assert (made["set_id"], made["label"]) == (safety["set"], "revert")

    again = daemon.cli("revert", safety["snapshot"], "--json")  # the revert reverted
    assert differences(before, tree_manifest(str(a))) == []
    assert again["safety"]["snapshot"] not in (first, second, safety["snapshot"])
    nothing = daemon.cli("revert", safety["snapshot"], "--json")
    assert nothing["changes"] == [] and nothing["safety"] is None  # nothing to do: no snapshot either
    assert "already as in snapshot" in daemon.cli("revert", safety["snapshot"]).stdout


def test_revert_of_some_paths_changes_nothing_else(daemon: DaemonRun, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    b = daemon.add_volume("b")
    daemon.wait_ready()
    t = a / "t"
    make_tree(str(t), random.Random(6))
    (b / "other").write_text("volume b")
    first = snapshot_id(daemon)
    at_first = tree_manifest(str(a))
    (t / "docs" / "f1.txt").write_bytes(b"rewritten")
    (t / "docs" / "f2.txt").unlink()
    (t / "docs" / "new").write_text("born since")
    os.rename(t / "docs" / "f3.txt", t / "docs" / "f3-renamed")
    os.mkdir(t / "docs" / "sub")
    os.rename(t / "docs" / "f4.txt", t / "docs" / "sub" / "f4.txt")
    os.setxattr(t / "docs", "user.dir", b"changed")
    (t / "zeros").unlink()  # another path, reverted too
    (t / "empty" / "born").write_text("not in the snapshot: deleted by the revert")
    with open(t / "sparse.img", "ab") as f:  # outside the paths: stays
        f.write(b"tail")
    (t / "hole-only").unlink()
    (b / "other").write_text("changed in volume b")
    before, before_b = tree_manifest(str(a)), tree_manifest(str(b))

    dry = daemon.cli("revert", first, str(t / "docs"), str(t / "zeros"), str(t / "empty" / "born"),
                     str(t / "docs" / "f1.txt"), "--dry-run", "--json")
    assert dry["paths"] == ["t/docs", "t/empty/born", "t/zeros"]  # f1.txt is inside docs
    assert tree_manifest(str(a)) == before
    relative = subprocess.run([*SHADOWFS, "revert", first, "docs", "zeros", "empty/born", "--volume", "a"],
                              cwd=t, env=daemon.env, capture_output=True, text=True, timeout=120, check=False)
    assert relative.returncode == 0, relative.stderr  # paths relative to the current directory
    after = tree_manifest(str(a))
    tops = ("./t/docs", "./t/zeros", "./t/empty/born")
    for top in tops:
        assert differences(subtree(at_first, top, True), subtree(after, top, True)) == [], top
    rest_before, rest_after = before, after
    for top in tops:
        rest_before, rest_after = subtree(rest_before, top, False), subtree(rest_after, top, False)
    assert differences(rest_before, rest_after) == []  # the directories holding them keep their times too
    assert rest_before["./t/empty"] == rest_after["./t/empty"] and rest_after["./t/sparse.img"] != at_first[
        "./t/sparse.img"]
    assert tree_manifest(str(b)) == before_b

    with open(t / "links" / "a", "ab") as f:  # its other names, links/b and docs/c-link, change too
        f.write(b" changed")
    daemon.cli("revert", first, str(t / "docs" / "c-link"))
    assert (t / "docs" / "c-link").read_bytes() == b"linked content"
    assert (t / "links" / "b").read_bytes() == b"linked content changed"  # outside the path: untouched
    assert ((t / "links" / "a").stat().st_nlink, (t / "docs" / "c-link").stat().st_nlink) == (2, 1)

    other = cli_error(daemon, "revert", first, str(b / "other"), code=2)
    assert f"{b / 'other'} is in volume b, not in volume a of snapshot {first}" in other
    assert "is not inside a protected volume" in cli_error(daemon, "revert", first, str(tmp_path), code=2)
    assert "t/nothing: neither in the snapshot nor in the volume" in cli_error(
        daemon, "revert", first, str(t / "nothing"), code=2)
    gone = daemon.cli("snapshot", "create", "a", "--json")["snapshots"][0]["id"]
    daemon.cli("snapshot", "delete", gone)
    assert f"no snapshot {gone}" in cli_error(daemon, "revert", gone, code=2)
    assert tree_manifest(str(b)) == before_b


def test_a_revert_that_stops_says_where_and_the_safety_snapshot_undoes_it(daemon: DaemonRun) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    shutil.copy("/bin/sleep", a / "prog")
    (a / "moved").mkdir()
    (a / "moved" / "inside").write_text("in a directory renamed since")
    first = snapshot_id(daemon)
    with open(a / "prog", "ab") as f:
        f.write(b"appended")  # an ELF runs with bytes appended
    os.rename(a / "moved", a / "renamed")
    (a / "new").write_text("born since")
    before = tree_manifest(str(a))
    running = subprocess.Popen([str(a / "prog"), "60"])
    try:
        time.sleep(0.2)
        failed = daemon.cli("revert", first, "--json", check=False)
        assert failed.returncode == 1
        message = failed.stderr.strip()
        safety = next(s["id"] for s in daemon.cli("snapshot", "list", "--json") if s["label"] == "revert")
        assert message.startswith("shadowfs: revert stopped at prog: Text file busy (a program is running "
                                  "from it);"), message
        assert f"the volume as it was before is snapshot {safety}" in message
        assert f"`shadowfs revert {safety}` undoes what was done" in message
        assert "what was moved aside is in .shadowfs-revert-" in message
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
    daemon.cli("revert", safety)
    assert differences(before, tree_manifest(str(a))) == []


def test_a_path_damaged_in_the_snapshot_is_refused_and_others_still_revert(daemon: DaemonRun) -> None:
    """Design §9.3: a damaged object cannot be given back; with damage in the snapshot, captures do
    not tell what changed, so every object of the paths is compared instead."""
    a = daemon.add_volume("a")
    daemon.wait_ready()
    (a / "f").write_text("damaged later")
    (a / "g").write_text("one")
    first = snapshot_id(daemon)
    (a / "g").write_text("two")
    daemon.stop()
    area = DiffArea.open(statedir.diff_area_path(str(daemon.state), "a"))
    try:
        with area.write() as txn:
            area.mark_damaged(txn, BackingIno((a / "f").stat().st_ino), "f", "written while unprotected",
                              "2026-11-22T08:00:00Z")
    finally:
        area.close()
    daemon.start()
    daemon.wait_ready()
    before = tree_manifest(str(a))
    refused = cli_error(daemon, "revert", first, code=2)
    assert refused == (f"shadowfs: f: damaged in snapshot {first} (it changed while protection had lapsed), "
                       "so the snapshot cannot give it back; nothing was changed")
    assert tree_manifest(str(a)) == before and len(daemon.cli("snapshot", "list", "--json")) == 1
    daemon.cli("revert", first, str(a / "g"))
    assert (a / "g").read_text() == "one"
