"""Damage marks (design §9.3) on a real LMDB diff area: the marks and their lifetime, the format upgrade
that brings their database, reads of a `SnapshotView` that fail with EIO for a damaged object and stay
exact for every other, what the change scan and a backup do when they meet one, and the daemon's
listing of them."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lmdb
import pytest

from shadowfs import media
from shadowfs.backup.engine import BackupRequest, VolumeSource, backup
from shadowfs.daemon.areas import damaged_objects
from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea, DiffAreaError
from shadowfs.diffarea.schema import BLOCK_SIZE, BackingIno, DamageRecord, Seq
from shadowfs.errors import BackupJobError
from shadowfs.ipc import frames
from shadowfs.live.lapse import LapseGuard
from shadowfs.snapshot import changes
from shadowfs.snapshot.readers import ViewReader
from shadowfs.snapshot.view import SnapshotView
from tests.support.coresim import CoreSim

FOUND = "2026-11-22T08:00:00Z"
A, B, C = BackingIno(1001), BackingIno(1002), BackingIno(1003)


def _snapshot(area: DiffArea, name: str) -> Seq:
    with area.write() as txn:
        return area.record_snapshot(txn, name, name, FOUND).seq


def _delete(area: DiffArea, seq: Seq) -> None:
    with area.write() as txn:
        area.delete_snapshot(txn, seq)


def _mark(area: DiffArea, ino: BackingIno, path: str | None = "p", cause: str = "lapse",
          found: str = FOUND) -> bool:
    with area.write() as txn:
        return area.mark_damaged(txn, ino, path, cause, found)


def _marks(area: DiffArea) -> dict[BackingIno, Seq]:
    with area.read() as txn:
        return {record.ino: record.seq for record in area.damage_list(txn, Seq(0))}


@pytest.fixture
def area(tmp_path: Path) -> Any:
    opened = DiffArea.open(str(tmp_path / "area"), volume="v")
    yield opened
    opened.close()


# ---- the marks --------------------------------------------------------------------------------------


async def test_a_watcher_that_fails_mid_batch_is_answered_by_a_scan(area: DiffArea,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of the change watcher that fails (here as open_by_handle_at did once, ENOMEM) must not
    end the mount process: what the batch held is found by a scan since the lapse's start."""
    class FailingWatch:
        def read(self, ignore_pids: object) -> list[object]:
            raise OSError(errno.ENOMEM, "open_by_handle_at(handle type 1): Cannot allocate memory")

    record = SimpleNamespace(lapse_start=lambda: 1234.5, heartbeat=lambda at: None)
    guard = LapseGuard("v", area, committer=None, root_fd=-1, backing="/nowhere",  # type: ignore[arg-type]
                       watch=FailingWatch(), record=record)  # type: ignore[arg-type]
    scans: list[float | None] = []
    monkeypatch.setattr(guard, "catch_up", lambda since: scans.append(since) or 0)
    await guard.handle_pending()
    assert scans == [1234.5]


def test_no_snapshot_no_mark(area: DiffArea) -> None:
    assert _mark(area, A) is False
    with area.read() as txn:
        assert txn.stat(area.damage)["entries"] == 0
        assert area.damaged_through(txn, A) is None


def test_mark_count_list(area: DiffArea) -> None:
    s1 = _snapshot(area, "s1")
    assert _mark(area, A, "d/a", "written while unprotected")
    s2 = _snapshot(area, "s2")
    assert _mark(area, B, None, "unknown writer", "2026-11-22T09:00:00Z")
    s3 = _snapshot(area, "s3")
    with area.read() as txn:
        assert area.damaged_through(txn, A) == s1 and area.damaged_through(txn, B) == s2
        assert area.damaged_through(txn, C) is None
        assert [area.damage_count(txn, s) for s in (s1, s2, s3)] == [2, 1, 0]
        assert area.damage_counts(txn, [s3, s1, s2]) == {s1: 2, s2: 1, s3: 0}
        assert area.damage_list(txn, s1) == [
            DamageRecord(A, s1, "d/a", "written while unprotected", FOUND),
            DamageRecord(B, s2, None, "unknown writer", "2026-11-22T09:00:00Z")]
        assert area.damage_list(txn, s2) == [DamageRecord(B, s2, None, "unknown writer",
                                                          "2026-11-22T09:00:00Z")]
        assert area.damage_list(txn, s3) == []


def test_a_mark_keeps_the_highest_sequence(area: DiffArea) -> None:
    s1, s2, s3 = (_snapshot(area, name) for name in ("s1", "s2", "s3"))
    _mark(area, A, "old/path", "first")
    _delete(area, s3)  # the newest is s2 now; the mark still says s3
    assert _mark(area, A, "new/path", "second", "2026-11-23T00:00:00Z")
    with area.read() as txn:
        assert area.damage_list(txn, s1) == [DamageRecord(A, s3, "new/path", "second",
                                                          "2026-11-23T00:00:00Z")]
    _mark(area, A, None, "third")  # no path known this time: the one found before stays
    s4 = _snapshot(area, "s4")
    _mark(area, A, None, "fourth")  # a higher newest: the mark moves up
    with area.read() as txn:
        assert area.damage_list(txn, s2) == [DamageRecord(A, s4, "new/path", "fourth", FOUND)]


def test_deleting_snapshots_drops_marks_no_snapshot_is_as_old_as(area: DiffArea) -> None:
    s1 = _snapshot(area, "s1")
    _mark(area, A)
    s2 = _snapshot(area, "s2")
    _mark(area, B)
    s3 = _snapshot(area, "s3")
    _mark(area, C)
    _delete(area, s2)  # not the oldest: every mark still damages s1
    assert _marks(area) == {A: s1, B: s2, C: s3}
    _delete(area, s1)  # the oldest is s3 now: A and B damage no remaining snapshot
    assert _marks(area) == {C: s3}
    with area.read() as txn:
        assert area.damage_count(txn, s3) == 1
    _delete(area, s3)
    assert _marks(area) == {}
    s4 = _snapshot(area, "s4")
    with area.read() as txn:
        assert area.damage_count(txn, s4) == 0


def test_the_last_snapshot_takes_every_mark_with_it(area: DiffArea) -> None:
    s1 = _snapshot(area, "s1")
    s2 = _snapshot(area, "s2")
    _mark(area, A)
    _delete(area, s1)
    assert _marks(area) == {A: s2}  # marked under s2, which remains
    _delete(area, s2)
    assert _marks(area) == {}


# ---- the format -------------------------------------------------------------------------------------


def _as_format(path: str, version: int) -> None:
    """Turn a diff area of this format into one of `version` (1 or 2) without the databases later
    formats added (``damage``, ``authors``), as the code of that format made them (its meta key
    and its databases are all that differ)."""
    env = lmdb.open(path, max_dbs=16, subdir=True)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(schema.DB_META, txn=txn)
            txn.put(schema.META_FORMAT, schema.u32(version), db=meta)
            for name in (schema.DB_DAMAGE, schema.DB_AUTHORS):
                txn.drop(env.open_db(name, txn=txn), delete=True)
    finally:
        env.close()


def _named_databases(path: str) -> set[bytes]:
    env = lmdb.open(path, max_dbs=16, subdir=True, readonly=True)
    try:
        with env.begin() as txn:
            return {key for key, _ in txn.cursor()}
    finally:
        env.close()


def test_format_2_is_upgraded_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "area")
    old = DiffArea.open(path, volume="v")
    s1 = _snapshot(old, "s1")
    old.close()
    _as_format(path, 2)
    assert schema.DB_DAMAGE not in _named_databases(path)
    with pytest.raises(DiffAreaError, match=f"format 2, not yet upgraded to format {schema.FORMAT_VERSION}"):
        DiffArea.open(path, readonly=True)  # readers wait for the mount process
    upgraded = DiffArea.open(path)
    try:
        with upgraded.read() as txn:
            assert schema.read_u32(txn.get(schema.META_FORMAT, db=upgraded.meta)) == schema.FORMAT_VERSION
            assert [r.seq for r in upgraded.snapshot_list(txn)] == [s1]
            assert txn.get(schema.META_VOLUME, db=upgraded.meta) == b"v"
            assert txn.stat(upgraded.damage)["entries"] == 0
        assert _mark(upgraded, A)
    finally:
        upgraded.close()
    reader = DiffArea.open(path, readonly=True)
    try:
        assert _marks(reader) == {A: s1}
    finally:
        reader.close()


def test_format_1_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "area")
    DiffArea.open(path, volume="v").close()
    _as_format(path, 1)
    refused = f"format 1, this shadowfs reads format {schema.FORMAT_VERSION}$"
    for readonly in (False, True):
        with pytest.raises(DiffAreaError, match=refused):
            DiffArea.open(path, readonly=readonly)
    assert schema.DB_DAMAGE not in _named_databases(path)


# ---- reads ------------------------------------------------------------------------------------------


def _eio(call: Callable[[], object]) -> None:
    with pytest.raises(OSError, match="damaged") as caught:
        call()
    assert caught.value.errno == errno.EIO


def _tree(sim: CoreSim) -> None:
    sim.mkdir("d")
    sim.create("d/f", os.urandom(3 * BLOCK_SIZE + 100))
    sim.create("d/keep", b"keep me")
    sim.create("plain", b"x" * 5000)
    sim.symlink("d/f", "link")
    sim.create("tagged", b"t")
    os.setxattr(os.path.join(sim.backing, "tagged"), "user.k", b"v")


def _sim_mark(sim: CoreSim, rel: str) -> None:
    with sim.area.write() as txn:
        assert sim.area.mark_damaged(txn, BackingIno(sim._ino(rel)), rel, "test", FOUND)


def test_every_read_of_a_damaged_object_fails_with_eio(sim: CoreSim) -> None:
    _tree(sim)
    before = {rel: open(os.path.join(sim.backing, rel), "rb").read() for rel in ("d/f", "d/keep", "plain")}
    seq = Seq(sim.snapshot("s1"))
    sim.write("d/f", BLOCK_SIZE, b"captured")  # one block has a pre-image: the mark wins over it too
    ino = {rel: BackingIno(sim._ino(rel)) for rel in ("d", "d/f", "d/keep", "plain", "link", "tagged")}
    for rel in ("d/f", "link", "tagged"):
        _sim_mark(sim, rel)
    view = sim.view(seq)
    size = len(before["d/f"])
    f = ino["d/f"]
    for call in (lambda: view.attr(f), lambda: view.attr(f, with_xattrs=True),
                 lambda: view.readlink(ino["link"]), lambda: view.xattrs(ino["tagged"]),
                 lambda: view.lookup(ino["d"], b"f"), lambda: view.lookup(view.root_ino, b"link"),
                 lambda: view.read(f, 0, 100, size), lambda: view.read_buffer(f, BLOCK_SIZE, 10, size),
                 lambda: view.read_hinted(f, 0, size, size), lambda: view.read_hinted(f, 0, 10, size,
                                                                                      live_first=True),
                 lambda: view.read(f, size, 10, size), lambda: view.data_regions(f, size)):
        _eio(call)
    # everything else reads exactly as it was
    assert view.read(ino["d/keep"], 0, 100, 7) == before["d/keep"]
    assert view.read(ino["plain"], 0, 10_000, 5000) == before["plain"]
    assert view.lookup(ino["d"], b"keep").ino == ino["d/keep"]
    assert [name for name, _ in view.listdir(ino["d"])] == [b"f", b"keep"]  # a damaged name is listed
    assert view.attr(ino["d"]).is_dir
    with pytest.raises(FileNotFoundError):
        view.lookup(ino["d"], b"missing")
    # a snapshot taken after the marks sees the live objects
    later = sim.view(Seq(sim.snapshot("s2")))
    assert later.readlink(ino["link"]) == b"d/f"
    assert later.xattrs(ino["tagged"]) == {b"user.k": b"v"}
    assert later.read(f, BLOCK_SIZE, 8, size) == b"captured"


def test_a_damaged_directory_answers_no_lookup_and_no_listing(sim: CoreSim) -> None:
    _tree(sim)
    seq = Seq(sim.snapshot("s1"))
    _sim_mark(sim, "d")
    view = sim.view(seq)
    d = BackingIno(sim._ino("d"))
    for call in (lambda: view.listdir(d), lambda: view.lookup(d, b"keep"), lambda: view.lookup(d, b"none"),
                 lambda: view.attr(d), lambda: view.lookup(view.root_ino, b"d")):
        _eio(call)
    keep = BackingIno(sim._ino("d/keep"))
    assert view.read(keep, 0, 100, 7) == b"keep me"  # its children, by inode, are not damaged


def test_views_of_several_snapshots_follow_the_sequence(sim: CoreSim) -> None:
    sim.create("f", b"one")
    s1 = Seq(sim.snapshot("s1"))
    s2 = Seq(sim.snapshot("s2"))
    _sim_mark(sim, "f")
    s3 = Seq(sim.snapshot("s3"))
    ino = BackingIno(sim._ino("f"))
    for seq in (s1, s2):
        _eio(lambda seq=seq: sim.view(seq).attr(ino))
    assert sim.view(s3).read(ino, 0, 10, 3) == b"one"
    sim.delete(s2)
    _eio(lambda: sim.view(s1).attr(ino))  # s1 still sees the lapse through the mark made under s2


# ---- the change scan and backups ------------------------------------------------------------------


def test_the_change_scan_refuses_a_base_with_damage(sim: CoreSim) -> None:
    sim.create("f", b"one")
    s1 = Seq(sim.snapshot("s1"))
    _sim_mark(sim, "f")
    s2 = Seq(sim.snapshot("s2"))
    sim.write("f", 0, b"two")
    s3 = Seq(sim.snapshot("s3"))
    with pytest.raises(DiffAreaError, match="1 object\\(s\\) changed while protection had lapsed"):
        changes.scan(sim.area, s1, s3)
    assert list(changes.scan(sim.area, s2, s3).inodes) == [sim._ino("f")]


def test_a_backup_that_meets_a_damaged_file_fails_naming_it(sim: CoreSim, tmp_path: Path) -> None:
    store = str(tmp_path / "media")
    sim.mkdir("d")
    sim.create("d/f", b"a" * 1000)
    sim.create("d/g", b"b" * 1000)
    s0 = Seq(sim.snapshot("s0"))
    backup(BackupRequest(store, {"v": VolumeSource(sim.backing, info={"seq": s0})}, "full"))
    sim.write("d/f", 0, b"changed")
    s1 = Seq(sim.snapshot("s1"))
    hint = changes.scan(sim.area, s0, s1)
    _sim_mark(sim, "d/f")  # protection lapsed while the backup ran: the object is damaged in s1
    reader = ViewReader(SnapshotView(sim.area, sim.live, s1))
    request = BackupRequest(store, {"v": VolumeSource(sim.backing, changes=hint, reader=reader,
                                                      info={"seq": s1, "snapshot_id": "snap-1"})},
                            "incremental")
    with pytest.raises(BackupJobError, match="^v:d/f: cannot be read from the snapshot: inode .* is damaged "
                                             "in snapshot .*snapshot damage snap-1"):
        backup(request)
    assert len(media.list_images(store)) == 1  # the full one: no incremental was completed


# ---- the daemon's listing ---------------------------------------------------------------------------


def test_the_daemons_listing_fits_a_frame_and_is_valid_text() -> None:
    odd = os.fsdecode(b"dir/caf\xe9")  # not UTF-8 on disk: a surrogate escape in the mark's path
    records = [DamageRecord(BackingIno(n), Seq(1), f"p{n}" if n else odd, "lapse", FOUND) for n in range(100)]
    listed = damaged_objects(records)
    assert len(listed) == 100 and listed[0]["path"] == "dir/caf\\xe9" and listed[5]["path"] == "p5"
    frames.encode_frame({"damaged": listed})  # every text encodes
    cut = damaged_objects(records, budget=1000)
    assert 0 < len(cut) < 100 and cut == listed[:len(cut)]
    big = [DamageRecord(BackingIno(n), Seq(1), "x" * 4000, "lapse", FOUND) for n in range(1000)]
    assert len(frames.encode_frame({"damaged": damaged_objects(big)})) <= frames.MAX_FRAME
