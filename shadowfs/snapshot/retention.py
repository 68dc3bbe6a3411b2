"""Which snapshots a retention policy keeps: restic `forget`'s rules, over snapshot times.

One job: given snapshots (an id and a creation time each) and a `Policy`, say
which are kept and why, and which go. The daemon applies it per volume
(`snapshot prune`); held snapshots are the daemon's business, not this
module's.

The rules, as restic documents them for `forget` (newest snapshot first):
- `last` n: the n newest snapshots are kept.
- `hourly`, `daily`, `weekly`, `monthly`, `yearly` n: of the n newest
  hours (days, ISO weeks, months, years) that have at least one snapshot,
  the newest snapshot of each is kept. Periods without a snapshot do not
  count. Periods are in local time, like restic's.
- A snapshot is kept if any rule keeps it; the reasons name every rule that
  did. A policy with no rule keeps everything is refused (`ValueError`), as
  restic refuses to forget without one.

Invariants: pure (no I/O); the result covers every snapshot given exactly
once; snapshots of the same time (creation times have one-second steps) are
ordered by `order` (the daemon gives each volume's sequence numbers), then by
id, so the result does not depend on the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}
RULES = ("last", *PERIODS)


@dataclass(frozen=True)
class Policy:
    """How many of each to keep; 0 or None: the rule is not used."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def counts(self) -> dict[str, int]:
        return {rule: getattr(self, rule) or 0 for rule in RULES}

    def check(self) -> None:
        counts = self.counts()
        bad = [rule for rule, count in counts.items() if count < 0]
        if bad:
            raise ValueError(f"--keep-{bad[0]} must be 0 or more")
        if not any(counts.values()):
            raise ValueError("no --keep-* rule given: nothing would be kept, so nothing is pruned")


@dataclass(frozen=True)
class Stamped:
    """A snapshot as the policy sees it."""

    id: str
    created: datetime  # aware (UTC as recorded); periods are taken in local time
    order: int = 0  # among snapshots of the same time, the higher is the newer


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons, newest first
    remove: list[str] = field(default_factory=list)  # newest first


def decide(snapshots: Sequence[Stamped], policy: Policy) -> Decision:
    """Apply `policy` to `snapshots` (any order)."""
    policy.check()
    newest_first = sorted(snapshots, key=lambda s: (s.created, s.order, s.id), reverse=True)
    reasons: dict[str, list[str]] = {s.id: [] for s in newest_first}
    counts = policy.counts()
    for snapshot in newest_first[:counts["last"]]:
        reasons[snapshot.id].append("last")
    for rule, period_of in PERIODS.items():
        left = counts[rule]
        seen: set[tuple[int, ...]] = set()
        for snapshot in newest_first:
            if left <= 0:
                break
            period = period_of(snapshot.created.astimezone())
            if period in seen:
                continue
            seen.add(period)
            reasons[snapshot.id].append(rule)
            left -= 1
    decision = Decision()
    for snapshot in newest_first:
        if reasons[snapshot.id]:
            decision.keep[snapshot.id] = reasons[snapshot.id]
        else:
            decision.remove.append(snapshot.id)
    return decision


def parse_created(text: str) -> datetime:
    """A snapshot record's `created` (ISO 8601, UTC with a `Z`) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
