"""restic forget's rules over snapshot times (snapshot/retention.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shadowfs.snapshot.retention import Policy, Stamped, decide, parse_created


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Periods are local time: pin the zone so that the buckets below are what they say."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(text: str) -> datetime:
    return parse_created(text)


def snaps(*times: str) -> list[Stamped]:
    return [Stamped(f"s{i}", at(t)) for i, t in enumerate(times)]


def test_keep_last_keeps_the_newest_whatever_the_order_given() -> None:
    given = snaps("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z", "2026-12-01T11:00:00Z")
    decision = decide(list(reversed(given)), Policy(last=2))
    assert decision.keep == {"s1": ["last"], "s2": ["last"]}
    assert decision.remove == ["s0"]


def test_daily_keeps_the_newest_of_each_day_and_skips_empty_days() -> None:
    given = snaps("2026-12-01T08:00:00Z", "2026-12-01T20:00:00Z",  # day 1: 20:00 kept
                  "2026-12-03T09:00:00Z",  # day 3 (day 2 has none: it does not count)
                  "2026-12-04T01:00:00Z", "2026-12-04T02:00:00Z")  # day 4: 02:00 kept
    decision = decide(given, Policy(daily=3))
    assert sorted(decision.keep) == ["s1", "s2", "s4"]
    assert decision.remove == ["s3", "s0"]


def test_a_snapshot_kept_by_several_rules_names_them_all() -> None:
    given = snaps("2026-11-30T23:00:00Z", "2026-12-01T00:30:00Z", "2026-12-01T01:30:00Z")
    decision = decide(given, Policy(last=1, hourly=2, daily=2, monthly=2))
    assert decision.keep["s2"] == ["last", "hourly", "daily", "monthly"]
    assert decision.keep["s1"] == ["hourly"]
    assert decision.keep["s0"] == ["daily", "monthly"]
    assert decision.remove == []


def test_weekly_uses_iso_weeks_and_yearly_years() -> None:
    # 2026-12-27 is a Sunday (ISO week 52), 2026-12-28 a Monday (week 53)
    given = snaps("2026-12-26T12:00:00Z", "2026-12-27T12:00:00Z", "2026-12-28T12:00:00Z",
                  "2025-06-01T00:00:00Z")
    decision = decide(given, Policy(weekly=2, yearly=2))
    assert decision.keep == {"s2": ["weekly", "yearly"], "s1": ["weekly"], "s3": ["yearly"]}
    assert decision.remove == ["s0"]


def test_hourly_over_a_day_of_snapshots_every_ten_minutes() -> None:
    start = at("2026-12-04T00:00:00Z")
    given = [Stamped(f"t{i:03}", start + timedelta(minutes=10 * i)) for i in range(144)]
    decision = decide(given, Policy(hourly=24))
    kept = sorted(decision.keep)
    assert len(kept) == 24 and len(decision.remove) == 120
    # the newest of each hour: minute 50
    assert all(given[int(k[1:])].created.minute == 50 for k in kept)


def test_local_time_decides_the_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9: both are 4 December there
    time.tzset()
    given = snaps("2026-12-03T16:00:00Z", "2026-12-03T20:00:00Z")
    assert decide(given, Policy(daily=5)).remove == ["s0"]


def test_ties_in_time_are_broken_by_id() -> None:
    same = datetime(2026, 12, 4, tzinfo=UTC)
    given = [Stamped("b", same), Stamped("a", same)]
    assert decide(given, Policy(last=1)).keep == {"b": ["last"]}
    assert decide(list(reversed(given)), Policy(last=1)).keep == {"b": ["last"]}


@pytest.mark.parametrize("policy, message", [
    (Policy(), "no --keep-\\* rule given"),
    (Policy(daily=-1), "--keep-daily must be 0 or more"),
])
def test_bad_policies_are_refused(policy: Policy, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(snaps("2026-12-01T00:00:00Z"), policy)
