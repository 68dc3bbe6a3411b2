"""`shadowfs versions PATH` through the real daemon: each distinct version of a path in its volume's
snapshots, oldest first, then the live one, checked against what the test wrote at each step and
read back from the paths the command gives."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.daemon.test_daemon import cli_error
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids(version: dict[str, object]) -> list[str]:
    snapshots = version["snapshots"]
    assert isinstance(snapshots, list)
    return [s["snapshot"] for s in snapshots]


def test_versions_of_a_file_a_directory_a_symlink_and_a_late_name(daemon: DaemonRun, tmp_path: Path) -> None:
    a = daemon.add_volume("a")
    daemon.wait_ready()
    f, d, link, late = a / "f", a / "d", a / "link", a / "late"
    f.write_bytes(b"one")
    d.mkdir()
    (d / "x").write_text("x")
    link.symlink_to("f")
    first = daemon.snapshot("a")["snapshots"][0]["id"]
    f.write_bytes(b"two!!")
    os.rename(d / "x", d / "y")
    (d / "z").write_text("z")
    second = daemon.snapshot("a")["snapshots"][0]["id"]
    third = daemon.snapshot("a")["snapshots"][0]["id"]  # nothing changed: one version with the second
    os.chmod(f, 0o600)  # the metadata alone: the live version differs
    late.write_text("born after every snapshot")
    link.unlink()
    link.symlink_to("d")

    out = daemon.cli("versions", str(f), "--json")
    assert (out["volume"], out["path"], out["live_path"]) == ("a", "f", str(f))
    v = out["versions"]
    assert [(x["state"], ids(x), x.get("live", False)) for x in v] == [
        ("present", [first], False), ("present", [second, third], False), ("present", [], True)]
    assert [(x["type"], x["size"], x["sha256"], x["inode"]) for x in v] == [
        ("file", 3, sha(b"one"), f.stat().st_ino), ("file", 5, sha(b"two!!"), f.stat().st_ino),
        ("file", 5, sha(b"two!!"), f.stat().st_ino)]
    assert [Path(x["path"]).read_bytes() for x in v] == [b"one", b"two!!", b"two!!"]
    assert v[1]["path"] == v[1]["snapshots"][1]["path"]  # opened in the newest snapshot it is seen in
    assert (v[0]["mode"], v[2]["mode"], v[2]["path"]) == (0o644, 0o600, str(f))
    assert not v[2]["same_as_previous"]
    assert v[2]["mtime_ns"] == f.stat().st_mtime_ns and v[2]["mtime"].endswith("Z")

    dirs = daemon.cli("versions", str(d), "--json")["versions"]
    assert [(ids(x), x["entered"], x["left"]) for x in dirs] == [
        ([first], ["x"], []), ([second, third], ["y", "z"], ["x"]), ([], [], [])]
    assert dirs[2]["same_as_previous"] and dirs[2]["type"] == "dir"

    links = daemon.cli("versions", str(link), "--json")["versions"]
    assert [(x["target"], ids(x)) for x in links] == [("f", [first, second, third]), ("d", [])]
    assert links[0]["inode"] != links[1]["inode"]  # another object under the same name

    born = daemon.cli("versions", str(late), "--json")["versions"]
    assert [(x["state"], ids(x)) for x in born] == [("absent", [first, second, third]), ("present", [])]
    assert born[1]["sha256"] == sha(b"born after every snapshot")

    text = daemon.cli("versions", str(f)).stdout.splitlines()
    assert text[0] == f"{f} (volume a, 3 snapshot(s)): 3 version(s)"
    assert "SEEN IN" in text[1] and first[:8] in text[2] and "+1 later" in text[3]
    assert text[4].startswith("live")

    outside = tmp_path / "elsewhere"
    refused = cli_error(daemon, "versions", str(outside), code=2)
    assert f"{outside} is not inside a protected volume (volumes: a at {a})" in refused
    assert (f"{a / 'never'}: not in volume a and in none of its 3 snapshot(s)"
            in cli_error(daemon, "versions", str(a / "never"), code=2))
