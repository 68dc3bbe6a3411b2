"""Backup then restore elsewhere: 0 differences in content and metadata (ctime excepted).

Generated trees (sparse files, hard links, symlinks, fifos, device nodes, sockets, xattrs, an ACL, odd
names, a 255-byte name, empty directories, 40 levels of nesting) are backed up as a full image and
as chains of a full, three incrementals and a differential, with random changes in between, and
restored into fresh directories; each restore must equal the tree at its backup exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from shadowfs import media
from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.manifest import differences
from shadowfs.restore.engine import restore
from tests.support.treegen import make_tree, mutate, tree_manifest


def _check(expected: dict, restored: str) -> None:  # type: ignore[type-arg]
    diff = differences(expected, tree_manifest(restored))
    assert not diff, "\n".join(diff)


def test_full_round_trip(tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    make_tree(src, random.Random(1))
    expected = tree_manifest(src)
    image = backup(BackupRequest(str(tmp_path / "media"), {"vol": VolumeSource(src)}, "full"))
    assert media.verify(str(tmp_path / "media")) == []
    result = restore(str(tmp_path / "media"), image, str(tmp_path / "out"))
    _check(expected, str(tmp_path / "out" / "vol"))
    assert result.files > 30
    # sparse files stay sparse on the media and after the restore
    info = media.open_image(str(tmp_path / "media"), image).info
    assert info.stats["bytes"] < 2 << 20
    restored = os.stat(tmp_path / "out" / "vol" / "sparse.img")
    assert restored.st_blocks * 512 < 1 << 20


def test_copy_and_two_volumes(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_tree(a, random.Random(2))
    os.makedirs(b)
    Path(b, "only").write_bytes(b"x")
    image = backup(BackupRequest(str(tmp_path / "media"), {"va": VolumeSource(a), "vb": VolumeSource(b)},
                                 "copy"))
    restore(str(tmp_path / "media"), image, str(tmp_path / "out"))
    _check(tree_manifest(a), str(tmp_path / "out" / "va"))
    _check(tree_manifest(b), str(tmp_path / "out" / "vb"))


@pytest.mark.parametrize("seed", [3, 4])
def test_chain_full_three_incrementals_differential(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    src = str(tmp_path / "src")
    store = str(tmp_path / "media")
    make_tree(src, rng)
    expected = {}
    ids = [backup(BackupRequest(store, {"vol": VolumeSource(src)}, "full"))]
    expected[ids[-1]] = tree_manifest(src)
    for kind in ("incremental", "incremental", "incremental", "differential"):
        mutate(src, rng)
        ids.append(backup(BackupRequest(store, {"vol": VolumeSource(src)}, kind)))
        expected[ids[-1]] = tree_manifest(src)
    infos = [media.open_image(store, i).info for i in ids]
    assert [i.chain for i in infos] == [[], ids[:1], ids[:2], ids[:3], ids[:1]]
    assert media.verify(store) == []
    for n, image in enumerate(ids):
        out = str(tmp_path / f"out{n}")
        restore(store, image, out)
        _check(expected[image], os.path.join(out, "vol"))


def test_log_and_copy_in_a_chain(tmp_path: Path) -> None:
    """A log image (no writers: no log files) restores its base's tree; neither a log nor a copy image
    is ever the base of an incremental."""
    src = str(tmp_path / "src")
    store = str(tmp_path / "media")
    make_tree(src, random.Random(5))
    full = backup(BackupRequest(store, {"vol": VolumeSource(src)}, "full"))
    expected = tree_manifest(src)
    mutate(src, random.Random(6))
    log = backup(BackupRequest(store, {"vol": VolumeSource(src)}, "log"))
    copy = backup(BackupRequest(store, {"vol": VolumeSource(src)}, "copy"))
    inc = backup(BackupRequest(store, {"vol": VolumeSource(src)}, "incremental"))
    assert media.open_image(store, log).info.chain == [full]
    assert media.open_image(store, inc).info.chain == [full]
    assert media.open_image(store, copy).info.chain == []
    restore(store, log, str(tmp_path / "out-log"))
    _check(expected, str(tmp_path / "out-log" / "vol"))
    restore(store, inc, str(tmp_path / "out-inc"))
    _check(tree_manifest(src), str(tmp_path / "out-inc" / "vol"))
