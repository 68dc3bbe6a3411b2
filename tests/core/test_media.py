"""Backup media: crash safety, a full disk, versions, and damage detection.

One flipped bit anywhere in an image (COMPLETE marker, image.json, manifest, documents, packs) is
reported by `verify` naming the file, and refused by `restore` before anything is written; so are
truncated files, extra files and a missing chain image. A crash before the final rename leaves only
an ``.incomplete-`` directory, which listings ignore; a full disk leaves nothing.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from shadowfs import media
from shadowfs.backup.engine import BackupRequest, Documents, VolumeSource, backup
from shadowfs.media import imagewriter, layout
from shadowfs.restore.engine import restore
from tests.support.treegen import make_tree

WMD = "<WRITER_METADATA version='1.1'><IDENTIFICATION friendlyName='w'/></WRITER_METADATA>"
BCD = "<BACKUP_COMPONENTS version='1.1'/>"


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str]:
    src = str(tmp_path / "src")
    make_tree(src, random.Random(9))
    path = str(tmp_path / "media")
    image = backup(BackupRequest(path, {"vol": VolumeSource(src)}, "full", set_id="s",
                                 documents=Documents(BCD, [WMD, WMD])))
    return path, image


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_documents_are_kept(store: tuple[str, str]) -> None:
    path, image_id = store
    image = media.open_image(path, image_id)
    assert image.document(image.info.bcd or "").decode() == BCD
    assert [image.document(name).decode() for name in image.info.wmds] == [WMD, WMD]


def test_every_flipped_bit_is_found(store: tuple[str, str], tmp_path: Path) -> None:
    path, image_id = store
    root = os.path.join(path, image_id)
    rng = random.Random(1)
    names = sorted(os.path.relpath(os.path.join(top, n), root) for top, _, ns in os.walk(root) for n in ns)
    assert {"COMPLETE", "image.json", "manifest.jsonl", "documents/bcd.xml", "data/000000.pack"} <= set(names)
    for name in names:
        full = os.path.join(root, name)
        size = os.path.getsize(full)
        for offset in sorted({0, size // 2, size - 1, rng.randrange(size)}):
            _flip(full, offset)
            try:
                problems = media.verify(path)
                assert problems, f"flip in {name} at {offset} not detected"
                text = "; ".join(str(p) for p in problems)
                assert name in text or (name == "COMPLETE" and "COMPLETE" in text), text
                target = tmp_path / f"out-{name.replace('/', '_')}-{offset}"
                with pytest.raises(media.MediaError):
                    restore(path, image_id, str(target))
                assert not target.exists()
            finally:
                _flip(full, offset)
    assert media.verify(path) == []


def test_pack_damage_names_the_file(store: tuple[str, str]) -> None:
    path, image_id = store
    image = media.open_image(path, image_id)
    victim = next(r for r in image.records() if r.path == "docs/f1.txt")
    assert victim.data is not None
    _flip(os.path.join(path, image_id, layout.pack_name(victim.data.pack)), victim.data.offset + 1)
    text = "; ".join(str(p) for p in media.verify(path, image_id))
    assert "data/000000.pack" in text and "vol:docs/f1.txt" in text


@pytest.mark.parametrize("name", ["manifest.jsonl", "data/000000.pack", "documents/wmd-2.xml"])
def test_truncated_file(store: tuple[str, str], tmp_path: Path, name: str) -> None:
    path, image_id = store
    full = os.path.join(path, image_id, name)
    os.truncate(full, os.path.getsize(full) - 3)
    assert any(name in str(p) for p in media.verify(path))
    with pytest.raises(media.MediaError):
        restore(path, image_id, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_extra_and_missing_files(store: tuple[str, str]) -> None:
    path, image_id = store
    Path(path, image_id, "data", "000009.pack").write_bytes(b"x")
    assert any("000009.pack" in str(p) for p in media.verify(path))
    os.unlink(os.path.join(path, image_id, "data", "000009.pack"))
    os.unlink(os.path.join(path, image_id, "documents", "bcd.xml"))
    assert any("bcd.xml: missing" in str(p) for p in media.verify(path))


def test_chain_needs_every_image(tmp_path: Path) -> None:
    src, path = tmp_path / "src", str(tmp_path / "media")
    src.mkdir()
    (src / "f").write_bytes(b"1")
    full = backup(BackupRequest(path, {"v": VolumeSource(str(src))}, "full"))
    (src / "f").write_bytes(b"22")
    inc = backup(BackupRequest(path, {"v": VolumeSource(str(src))}, "incremental"))
    assert media.open_image(path, inc).info.chain == [full]
    os.rename(os.path.join(path, full), os.path.join(path, ".gone"))
    assert any(full in str(p) for p in media.verify(path, inc))
    with pytest.raises(media.MediaError):
        restore(path, inc, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(media.MediaError, match="no base image"):
        backup(BackupRequest(str(tmp_path / "empty-media"), {"v": VolumeSource(str(src))}, "differential"))


def test_unknown_version_or_feature_refused(store: tuple[str, str]) -> None:
    path, image_id = store
    info_path = os.path.join(path, image_id, "image.json")
    for change in ({"version": 2}, {"features": ["compression-zstd"]}):
        obj = json.loads(Path(info_path).read_bytes())
        obj.update(change)
        data = layout.canonical(obj)
        table = layout.parse_complete(Path(path, image_id, "COMPLETE").read_bytes(), image_id)
        original = Path(info_path).read_bytes(), Path(path, image_id, "COMPLETE").read_bytes()
        table["image.json"] = {"size": len(data), "sha256": layout.sha256_hex(data)}
        Path(info_path).write_bytes(data)
        Path(path, image_id, "COMPLETE").write_bytes(layout.complete_document(image_id, table))
        with pytest.raises(media.MediaError, match="version|features"):
            media.open_image(path, image_id)
        Path(info_path).write_bytes(original[0])
        Path(path, image_id, "COMPLETE").write_bytes(original[1])
    assert media.verify(path) == []


CRASH = """
import os, sys
from shadowfs.media import imagewriter
real = os.rename
def crash(src, dst, *a, **k):
    if ".incomplete-" in str(src):
        os._exit(9)
    return real(src, dst, *a, **k)
imagewriter.os.rename = crash
from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
backup(BackupRequest(sys.argv[2], {"v": VolumeSource(sys.argv[1])}, "full"))
"""


def test_crash_before_rename_leaves_no_image(tmp_path: Path) -> None:
    src, path = tmp_path / "src", str(tmp_path / "media")
    src.mkdir()
    (src / "f").write_bytes(b"data" * 1000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", CRASH, str(src), path], env=env, check=False)
    assert done.returncode == 9
    leftovers = os.listdir(path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".incomplete-")
    assert media.list_images(path) == [] and media.verify(path) == []
    image = backup(BackupRequest(path, {"v": VolumeSource(str(src))}, "full"))
    assert [i.id for i in media.list_images(path)] == [image]


def test_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, path = tmp_path / "src", str(tmp_path / "media")
    src.mkdir()
    (src / "f").write_bytes(os.urandom(3 << 20))
    written = [0]
    real = os.write

    def write(fd: int, data: bytes) -> int:
        written[0] += len(data)
        if written[0] > 1 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(imagewriter.os, "write", write)
    with pytest.raises(media.MediaError, match="full"):
        backup(BackupRequest(path, {"v": VolumeSource(str(src))}, "full"))
    monkeypatch.undo()
    assert os.listdir(path) == []


def test_list_and_base(tmp_path: Path) -> None:
    src, path = tmp_path / "src", str(tmp_path / "media")
    src.mkdir()
    ids = [backup(BackupRequest(path, {"v": VolumeSource(str(src))}, kind))
           for kind in ("full", "copy", "incremental", "differential")]
    assert [i.id for i in media.list_images(path)] == ids
    chains = [media.open_image(path, i).info.chain for i in ids]
    assert chains == [[], [], [ids[0]], [ids[0]]]  # a copy is never a base
    assert media.find_base(path, "incremental", ["v"]).id == ids[3]  # type: ignore[union-attr]
    assert media.find_base(path, "differential", ["v"]).id == ids[0]  # type: ignore[union-attr]
    assert media.find_base(path, "incremental", ["other"]) is None
