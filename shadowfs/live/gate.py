"""The hold gate: every changing request of a live mount passes it; a snapshot closes it.

One job: the hold of design §4.2 on the mount side. Changes run concurrently
while the gate is open; `hold` closes it and waits until the changes in flight
have drained, so that no change is half-applied at the snapshot's instant;
`release` opens it again and says how long it was closed.

Invariants:
- A change enters only while the gate is open, and is counted in flight until
  its handler returns (capture included).
- `hold` that cannot drain within its timeout reopens the gate and raises
  `trio.TooSlowError`; a second `hold` while held is a programming error.
- `on_idle` runs each time the last change in flight leaves, on the trio thread.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio


class HoldGate:
    """Every changing request passes through here; `hold` closes it and drains them.

    Changes run concurrently while the gate is open; in-flight tracking is a
    counter and an event. A closed gate parks new changes until `release`.
    The gate measures how long it stays closed (`release` returns it): that
    is how long changes on the volume were held for a snapshot.
    """

    def __init__(self) -> None:
        self._held = False
        self._opened = trio.Event()
        self._opened.set()
        self._in_flight = 0
        self._entered = 0
        self._closed_at = 0.0
        self._drained: trio.Event | None = None
        self.on_idle: Callable[[], None] | None = None  # runs whenever no change is in flight

    @property
    def held(self) -> bool:
        return self._held

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def entered(self) -> int:
        """How many changes have passed the gate so far (a change counter, never reset)."""
        return self._entered

    @asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        while self._held:
            await self._opened.wait()
        self._in_flight += 1
        self._entered += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                if self._drained is not None:
                    self._drained.set()
                if self.on_idle is not None:
                    self.on_idle()

    async def hold(self, timeout: float) -> None:
        """Close the gate and wait until no change is in flight; TooSlowError (gate reopened) if slow."""
        if self._held:
            raise RuntimeError("the gate is already held")
        self._held = True
        self._closed_at = time.perf_counter()
        self._opened = trio.Event()
        if self._in_flight == 0:
            return
        self._drained = trio.Event()
        try:
            with trio.fail_after(timeout):
                await self._drained.wait()
        except BaseException:
            self.release()
            raise
        finally:
            self._drained = None

    def release(self) -> float | None:
        """Open the gate; returns how many seconds it was closed (None if it was open)."""
        if not self._held:
            return None
        self._held = False
        self._opened.set()
        return time.perf_counter() - self._closed_at
