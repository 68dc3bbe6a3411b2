"""Waiting from trio for the committer: a capture is durable before the change goes on.

One job: the bridge between the live mount's trio thread and the group-commit
thread (`capture.committer`). `commit` hands a job over and waits, shielded from
cancellation, until the transaction holding it is committed; `store` does that
for a planner `Capture` and then lets the planner remember it; `settle` asks a
namespace plan again after each capture until one needs none.

Invariants:
- The wait is shielded: a handler cancelled while its pre-image commits still
  waits for the commit, so it never applies a change whose pre-image is not
  durable, and never leaves a job's result unread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

from shadowfs.capture.committer import Committer
from shadowfs.capture.planner import Capture
from shadowfs.diffarea.area import Txn

T = TypeVar("T")


async def commit(committer: Committer, job: Callable[[Txn], T]) -> T:
    """Run `job` on the committer thread and wait (shielded) until its commit is durable."""
    token = trio.lowlevel.current_trio_token()
    done_evt = trio.Event()
    box: list[Any] = []

    def done(result: Any, error: BaseException | None) -> None:
        box[:] = [result, error]
        token.run_sync_soon(done_evt.set)

    committer.submit(job, done)
    with trio.CancelScope(shield=True):
        await done_evt.wait()
    if box[1] is not None:
        raise box[1]
    result: T = box[0]  # what `job` returned (the error slot is None)
    return result


async def store(committer: Committer, capture: Capture | None) -> None:
    """Make the pre-images of `capture` durable (nothing to do for None)."""
    if capture is None:
        return
    await commit(committer, capture.job)
    if capture.after is not None:
        capture.after()


class _Plan(Protocol):
    @property
    def capture(self) -> Capture | None: ...


P = TypeVar("P", bound=_Plan)


async def settle(committer: Committer, plan: Callable[[], P]) -> P:
    """Plan, store what the plan needs, plan again, until a plan needs nothing; that plan.

    The caller applies its change right after, with no await in between.
    """
    while True:
        result = plan()
        if result.capture is None:
            return result
        await store(committer, result.capture)
