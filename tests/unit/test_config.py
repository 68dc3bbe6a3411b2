"""config: sizes, names, volume placement rules, atomic volumes.json, the daemon lock.

Real files and real processes; nothing mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowfs import statedir
from shadowfs.statedir import ConfigError, VolumeTable

GIB = 1 << 30


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("1048576", 1048576), ("512M", 512 << 20), ("10G", 10 * GIB), ("1.5G", 3 * GIB // 2),
    ("64k", 64 << 10), ("2T", 2 << 40), ("10GB", 10 * GIB), ("10GiB", 10 * GIB), ("100B", 100),
    (" 3 M ", 3 << 20), (".5G", GIB // 2), (4096, 4096),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert statedir.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "10X", "-1G", "0", "0.0001", "1.2.3G", "ten", "nanG", "1e9",
                                  "5 G B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        statedir.parse_size(text)


def test_format_size() -> None:
    assert statedir.format_size(10 * GIB) == "10G"
    assert statedir.format_size(1536) == "1.5K"
    assert statedir.format_size(12) == "12B"


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("", "must not be empty"), ("a/b", "must not contain '/'"), ("a\0b", "must not contain NUL"),
    (".", "invalid volume name"), ("..", "invalid volume name"), ("x" * 65, "longer than 64"),
    ("has space", "only letters"), ("tab\t", "only letters"), ("ünï", "only letters"),
])
def test_bad_volume_names(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        statedir.validate_volume_name(name)


@pytest.mark.parametrize("name", ["data", "a.b-c_d", "x" * 64, "V1", "..."])
def test_good_volume_names(name: str) -> None:
    assert statedir.validate_volume_name(name) == name


# --- locations ------------------------------------------------------------------------------------


def test_state_and_mount_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(statedir.STATE_ENV, raising=False)
    monkeypatch.delenv(statedir.MOUNT_ROOT_ENV, raising=False)
    assert statedir.resolve_state_dir(None) == "/var/lib/shadowfs"
    monkeypatch.setenv(statedir.STATE_ENV, str(tmp_path / "env"))
    assert statedir.resolve_state_dir(None) == str(tmp_path / "env")
    monkeypatch.chdir(tmp_path)
    assert statedir.resolve_state_dir("rel") == str(tmp_path / "rel")
    assert statedir.resolve_mount_root(None, "/s") == "/s/mnt"
    monkeypatch.setenv(statedir.MOUNT_ROOT_ENV, "/m")
    assert statedir.resolve_mount_root(None, "/s") == "/m"
    assert statedir.resolve_mount_root("/x", "/s") == "/x"
    assert statedir.diff_area_path("/s", "v") == "/s/volumes/v/diffarea"
    assert statedir.snapshot_path("/m", "SET", "v") == "/m/snapshots/SET/v"


# --- the volume table -----------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("state", "mnt", "data", "other", "elsewhere")}
    for path in paths.values():
        path.mkdir()
    return paths


def table_of(layout: dict[str, Path]) -> VolumeTable:
    return VolumeTable.load(str(layout["state"]), str(layout["mnt"]))


def test_add_volume_defaults_and_persistence(layout: dict[str, Path]) -> None:
    table = table_of(layout)
    volume = table.new_volume("data", str(layout["data"]) + "/./", None, None)
    assert volume.backing == str(layout["data"]) and volume.mount == volume.backing and volume.in_place
    assert volume.index == 1 and volume.max_diff_area_bytes >= GIB
    assert volume.created.endswith("Z") and len(volume.created) == 20
    table.add(volume)
    again = table_of(layout)
    assert again.volumes == {"data": volume}
    with open(layout["state"] / "volumes.json") as file:
        stored = json.load(file)
    assert stored["next_index"] == 2 and stored["version"] == 1
    assert stored["volumes"][0] == {"name": "data", "index": 1, "backing": str(layout["data"]),
                                    "mount": str(layout["data"]), "max_diff_area_bytes":
                                    volume.max_diff_area_bytes, "created": volume.created,
                                    "blocks": "state"}  # the state directory is on the same filesystem
    del stored["volumes"][0]["blocks"]  # a record written before the option: blocks beside the diff area
    assert statedir.Volume.from_json(stored["volumes"][0]).blocks == "state"
    assert table.new_volume("x", str(layout["other"]), None, None, "volume").blocks == "volume"
    with pytest.raises(ValueError, match="blocks must be 'state' or 'volume'"):
        table.new_volume("x", str(layout["other"]), None, None, "elsewhere")


def test_indexes_are_never_reused(layout: dict[str, Path]) -> None:
    table = table_of(layout)
    table.add(table.new_volume("a", str(layout["data"]), None, 1 << 20))
    table.add(table.new_volume("b", str(layout["other"]), None, 1 << 20))
    table.remove("b")
    table.remove("a")
    table = table_of(layout)
    assert table.new_volume("c", str(layout["other"]), None, 1 << 20).index == 3


def test_index_space_runs_out(layout: dict[str, Path]) -> None:
    table = table_of(layout)
    table.next_index = statedir.MAX_INDEX + 1
    with pytest.raises(ConfigError, match="no volume index left"):
        table.new_volume("a", str(layout["data"]), None, None)


def test_placement_errors(layout: dict[str, Path], tmp_path: Path) -> None:
    table = table_of(layout)
    nested = layout["data"] / "sub"
    nested.mkdir()
    (tmp_path / "file").write_text("x")
    table.add(table.new_volume("data", str(layout["data"]), None, None))
    cases = [
        (("x", str(tmp_path / "missing"), None, None), "does not exist"),
        (("x", str(tmp_path / "file"), None, None), "is not a directory"),
        (("x", "/", None, None), "root directory / cannot be"),
        (("x", str(nested), None, None), "is inside volume 'data'"),
        (("x", str(tmp_path), None, None), "contains the state directory"),
        (("data", str(layout["other"]), None, None), "already exists"),
        (("x", str(layout["other"]), str(layout["data"] / "m"), None), "overlaps the mount of volume 'data'"),
        (("x", str(layout["other"]), str(layout["other"] / "m"), None), "inside the volume's own backing"),
        (("x", str(layout["other"]), str(layout["mnt"] / "snapshots" / "v"), None), "snapshot browser"),
        (("x", str(layout["other"]), "/", None), "cannot mount a volume over /"),
        (("x", str(layout["other"]), None, 1000), "too small"),
        (("x", "/proc/sys", None, None), "is on proc; shadowfs protects trees on ext4, XFS and btrfs"),
        (("a/b", str(layout["other"]), None, None), "must not contain '/'"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message):
            table.new_volume(*args)
    link = tmp_path / "link-to-sub"
    link.symlink_to(nested)
    with pytest.raises(ConfigError, match="is inside volume 'data'"):
        table.new_volume("x", str(link), None, None)


def test_backing_containing_another_volume(layout: dict[str, Path], tmp_path: Path) -> None:
    table = VolumeTable.load(str(layout["state"]), str(layout["mnt"]))
    inner = layout["elsewhere"] / "inner"
    inner.mkdir()
    table.add(table.new_volume("inner", str(inner), None, None))
    with pytest.raises(ConfigError, match="contains volume 'inner'"):
        table.new_volume("outer", str(layout["elsewhere"]), None, None)


def test_state_dir_and_mount_root_inside_a_protected_tree(tmp_path: Path) -> None:
    protected = tmp_path / "protected"
    (protected / "state").mkdir(parents=True)
    table = VolumeTable.load(str(protected / "state"), str(tmp_path / "mnt"))
    with pytest.raises(ConfigError, match="contains the state directory"):
        table.new_volume("p", str(protected), None, None)
    table = VolumeTable.load(str(tmp_path / "state2"), str(protected / "mnt"))
    with pytest.raises(ConfigError, match="contains the mount root"):
        table.new_volume("p", str(protected), None, None)
    (tmp_path / "state3").mkdir()
    table = VolumeTable.load(str(tmp_path / "state3"), str(tmp_path / "mnt"))
    table.add(table.new_volume("p", str(protected), None, None))
    moved = VolumeTable.load(str(tmp_path / "state3"), str(protected / "mnt"))
    with pytest.raises(ConfigError, match="mount root .* is inside volume 'p'"):
        moved.check_layout()


def test_malformed_volumes_json(layout: dict[str, Path]) -> None:
    path = layout["state"] / "volumes.json"
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read"):
        table_of(layout)
    path.write_text(json.dumps({"version": 99, "volumes": []}))
    with pytest.raises(ConfigError, match="unknown format"):
        table_of(layout)
    path.write_text(json.dumps({"version": 1, "volumes": [{"name": "x"}]}))
    with pytest.raises(ConfigError, match="malformed volume entry"):
        table_of(layout)


# --- atomic writes --------------------------------------------------------------------------------


def test_atomic_write_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    statedir.write_json_atomic(str(target), {"a": 1})
    statedir.write_json_atomic(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["t.json"]
    with pytest.raises(TypeError):
        statedir.write_json_atomic(str(target), {"a": object()})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["t.json"]


def test_readers_never_see_a_half_written_file(tmp_path: Path) -> None:
    """A writer process replaces the file in a loop and is killed mid-way; every read is whole."""
    target = tmp_path / "volumes.json"
    statedir.write_json_atomic(str(target), {"n": -1, "pad": "x" * 200_000})
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys; from shadowfs import statedir\n"
        "n = 0\n"
        "while True:\n"
        "    statedir.write_json_atomic(sys.argv[1], {'n': n, 'pad': 'x' * 200_000}); n += 1\n"
    ), str(target)])
    try:
        deadline = time.monotonic() + 1.5
        seen = set()
        while time.monotonic() < deadline:
            seen.add(json.loads(target.read_text())["n"])
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) > 1
    assert json.loads(target.read_text())["pad"] == "x" * 200_000


# --- the daemon lock ------------------------------------------------------------------------------


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from shadowfs import statedir\n"
        "lock = statedir.DaemonLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)\n"
    ), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(statedir.DaemonRunning) as info:
            statedir.DaemonLock(str(tmp_path)).acquire()
        assert str(info.value) == f"another shadowfs daemon is running on state {tmp_path} (pid {holder.pid})"
    finally:
        holder.kill()
        holder.wait()
    with statedir.DaemonLock(str(tmp_path)) as lock:
        assert lock.fd is not None
        assert (tmp_path / "daemon.lock").read_text().strip() == str(os.getpid())
    with statedir.DaemonLock(str(tmp_path)):
        pass  # released: can be taken again


def test_prepare_state_dir_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    statedir.prepare_state_dir(str(state))
    assert (state / "volumes").is_dir()
    assert os.stat(state / "volumes").st_mode & 0o777 == 0o700
