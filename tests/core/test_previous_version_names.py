"""Previous-version names (design §5.6) on a real LMDB diff area: each snapshot of a volume gets its
own UTC second, given once and kept; two snapshots in one second get two names, a deleted snapshot's
name is never given again, and snapshots recorded before names were (no ``gmt`` in their record) get
names derived the same way, which later ones never collide with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.diffarea import schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import Seq, SnapshotRecord


@pytest.fixture
def area(tmp_path: Path) -> Iterator[DiffArea]:
    opened = DiffArea.open(str(tmp_path / "area"), volume="v")
    yield opened
    opened.close()


def _take(area: DiffArea, created: str) -> SnapshotRecord:
    with area.write() as txn:
        return area.record_snapshot(txn, f"snap-{created}-{id(txn)}", f"set-{id(txn)}", created)


def _names(area: DiffArea) -> dict[Seq, str]:
    with area.read() as txn:
        return schema.previous_version_names(area.snapshot_list(txn))


def test_one_second_two_snapshots_two_names(area: DiffArea) -> None:
    first = _take(area, "2026-12-04T10:00:00.100000+00:00")
    second = _take(area, "2026-12-04T10:00:00.900000+00:00")
    later = _take(area, "2026-12-04T10:05:00+00:00")
    assert _names(area) == {first.seq: "@GMT-2026.12.04-10.00.00", second.seq: "@GMT-2026.12.04-10.00.01",
                            later.seq: "@GMT-2026.12.04-10.05.00"}


def test_a_name_is_never_given_again_after_its_snapshot_is_deleted(area: DiffArea) -> None:
    first = _take(area, "2026-12-04T10:00:00+00:00")
    second = _take(area, "2026-12-04T10:00:00+00:00")
    given = _names(area)[second.seq]
    with area.write() as txn:
        area.delete_snapshot(txn, second.seq)
    third = _take(area, "2026-12-04T10:00:00+00:00")  # same second again, e.g. a clock set back
    names = _names(area)
    assert names[third.seq] not in (given, names[first.seq])
    assert names == {first.seq: "@GMT-2026.12.04-10.00.00", third.seq: "@GMT-2026.12.04-10.00.02"}


def test_names_survive_holds_and_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "area")
    area = DiffArea.open(path, volume="v")
    record = _take(area, "2026-12-04T10:00:00Z")
    _take(area, "2026-12-04T10:00:00Z")
    with area.write() as txn:
        area.set_held(txn, record.seq, "2026-12-04T10:01:00Z")
    before = _names(area)
    area.close()
    area = DiffArea.open(path, readonly=True)
    try:
        assert _names(area) == before
        with area.read() as txn:
            assert area.snapshot(txn, record.seq) == SnapshotRecord(
                record.seq, record.snapshot_id, record.set_id, record.created, "2026-12-04T10:01:00Z",
                record.gmt)
    finally:
        area.close()


def test_records_from_before_names_get_derived_ones_and_new_ones_follow(area: DiffArea) -> None:
    """An area written before the ``gmt`` field existed: its names come from creation times (equal
    seconds spread in sequence order), and the first snapshot recorded now goes past all of them."""
    old = [_take(area, "2026-12-04T10:00:00Z") for _ in range(3)]
    with area.write() as txn:  # make them look as the previous version wrote them
        for record in old:
            fields = json.loads(schema.encode_snapshot(record))
            del fields["gmt"]
            txn.put(schema.u64(record.seq), json.dumps(fields).encode(), db=area.snapshots_db)
        txn.delete(schema.META_LAST_GMT, db=area.meta)
    assert list(_names(area).values()) == ["@GMT-2026.12.04-10.00.00", "@GMT-2026.12.04-10.00.01",
                                           "@GMT-2026.12.04-10.00.02"]
    new = _take(area, "2026-12-04T10:00:01Z")
    assert new.gmt is not None
    assert _names(area)[new.seq] == "@GMT-2026.12.04-10.00.03"


def test_unreadable_creation_time_still_gets_a_unique_name(area: DiffArea) -> None:
    first = _take(area, "not a time")
    second = _take(area, "")
    names = _names(area)
    assert names[first.seq] != names[second.seq]
    assert schema.created_second("2026-12-04T10:00:00") == schema.created_second("2026-12-04T10:00:00Z")
