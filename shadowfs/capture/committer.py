"""Group commits: one thread, one LMDB write transaction for many capture jobs.

One job: make pre-images durable cheaply. Callers submit jobs (functions that
take a write transaction); the committer thread takes every job queued so far,
runs each inside a nested transaction (so a failing job leaves no partial
writes and does not fail its neighbours), commits once (LMDB fsyncs), and only
then reports each job's result. A caller applies its change after that report,
which is what makes "pre-image durable before the change" hold.

Invariants:
- All writes to a diff area from a mount process go through its one committer,
  so the check-then-store of a pre-image is never raced by another writer.
- `done` callbacks run on the committer thread, after the commit; they must
  only hand the result over (for example with trio's `run_sync_soon`).
- Jobs submitted with `done=None` are fire-and-forget but still ordered with
  the others (a later job sees their writes).
- A job gets a `diffarea.area.Txn` (values as bytes); `run` returns what its
  job returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from shadowfs.diffarea.area import Txn

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[Txn], Any]
Done = Callable[[Any, BaseException | None], None]
AfterCommit = Callable[[], None]

MAX_BATCH = 4096


@dataclass
class _Item:
    job: Job
    done: Done | None


class Committer:
    """The group-commit thread of one diff area."""

    def __init__(self, env: lmdb.Environment, *, before_commit: AfterCommit | None = None,
                 after_commit: AfterCommit | None = None, name: str = "shadowfs-committer") -> None:
        self._env = env
        self._before_commit = before_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._after_commit = after_commit
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self.commits = 0
        self._thread.start()

    def submit(self, job: Job, done: Done | None = None) -> None:
        if self._stopped:
            raise RuntimeError("committer is stopped")
        self._queue.put(_Item(job, done))

    def run(self, job: Callable[[Txn], T]) -> T:
        """Blocking helper for threads other than the committer's: submit and wait."""
        finished = threading.Event()
        box: list[Any] = []

        def done(result: Any, error: BaseException | None) -> None:
            box.extend((result, error))
            finished.set()

        self.submit(job, done)
        finished.wait()
        if box[1] is not None:
            raise box[1]
        result: T = box[0]  # what `job` returned (the error slot is None)
        return result

    def stop(self) -> None:
        """Finish every queued job, then end the thread."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()

    def _take_batch(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._take_batch()
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        try:
            with self._env.begin(write=True) as txn:
                for item in batch:
                    results.append(self._run_job(txn, item.job))
                if self._before_commit is not None:
                    self._before_commit()  # e.g. make block bytes durable before their references
            self.commits += 1
        except BaseException as exc:  # the commit itself failed: every job failed
            log.exception("diff area commit failed")
            results = [(None, exc)] * len(batch)
        for item, (result, error) in zip(batch, results, strict=True):
            if item.done is not None:
                item.done(result, error)
            elif error is not None:
                log.error("background diff area job failed: %s", error)
        if self._after_commit is not None:
            try:
                self._after_commit()
            except Exception:
                log.exception("after-commit hook failed")

    def _run_job(self, txn: Txn, job: Job) -> tuple[Any, BaseException | None]:
        child = self._env.begin(write=True, parent=txn)
        try:
            result = job(child)
        except Exception as exc:
            child.abort()
            return None, exc
        child.commit()
        return result, None
