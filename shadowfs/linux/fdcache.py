"""Open descriptors by key, least recently used out: the one descriptor cache of shadowfs.

One job: keep a bounded number of descriptors open for objects that are used
again and again (backing objects by inode in the live mount and in snapshot
reads, directories by path in a restore), and close the rest, so that open
descriptors and memory do not grow with the tree.

Two ways to use a descriptor, as borg's `LRUCache(dispose=)` and libfuse's
passthrough_hp do:

- `borrow(key)` pins it for the length of a `with` block: a pinned descriptor
  is never disposed, not by eviction and not by `close`; the cache may hold
  more than its capacity while that many are pinned, and a descriptor dropped
  while pinned is disposed when its last borrower gives it back. Any thread
  may borrow.
- `get` / `open` hand it out unpinned, for callers that guarantee nothing
  evicts it while they use it (a single thread between two cache calls), or
  whose `dispose` defers the close until it is safe (the live mount retires
  evicted descriptors until no change is in flight).

Invariants:
- Every descriptor put into the cache is owned by it and reaches `dispose`
  exactly once: on eviction, replacement, `discard`, or `close`.
- The lock is never held across a call that can wait on the disk (`opener`
  runs unlocked; a descriptor opened twice by racing threads is closed once).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Entry:
    fd: int
    pins: int = 0
    dropped: bool = False  # no longer in the cache: dispose when the last pin goes


class DescriptorCache(Generic[K]):
    """Up to `capacity` unpinned descriptors by key; `opener(key)` opens a missing one."""

    def __init__(self, capacity: int, opener: Callable[[K], int],
                 dispose: Callable[[int], None] = os.close) -> None:
        if capacity < 1:
            raise ValueError(f"a descriptor cache holds at least one descriptor, not {capacity}")
        self.capacity = capacity
        self._opener = opener
        self._dispose = dispose
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, _Entry] = OrderedDict()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    # ---- unpinned -------------------------------------------------------------------------------

    def get(self, key: K) -> int | None:
        """The cached descriptor of `key` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.fd

    def open(self, key: K) -> int:
        """The cached descriptor of `key`, opened and cached first if missing (unpinned)."""
        fd = self.get(key)
        if fd is None:
            if self._closed:
                raise ValueError("the descriptor cache is closed")
            fd = self._opener(key)
            self.put(key, fd)
        return fd

    def put(self, key: K, fd: int) -> None:
        """Cache `fd` as the descriptor of `key`, taking ownership (an older one is disposed)."""
        with self._lock:
            if self._closed:
                victims = [_Entry(fd)]
            else:
                old = self._entries.pop(key, None)
                self._entries[key] = _Entry(fd)
                victims = self._drop(old) + self._evict()
        self._dispose_all(victims)

    # ---- pinned ---------------------------------------------------------------------------------

    @contextmanager
    def borrow(self, key: K) -> Iterator[int]:
        """The descriptor of `key`, pinned (never disposed) until the block ends."""
        entry = self._acquire(key)
        try:
            yield entry.fd
        finally:
            self._give_back(entry)

    def _acquire(self, key: K) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.pins += 1
                self._entries.move_to_end(key)
                return entry
        fd = self._opener(key)  # may wait for the disk: unlocked
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:  # another thread was quicker: use its descriptor
                entry.pins += 1
                self._entries.move_to_end(key)
                extra = [_Entry(fd)]
            elif self._closed:
                return _Entry(fd, pins=1, dropped=True)
            else:
                entry = self._entries[key] = _Entry(fd, pins=1)
                extra = self._evict()
        self._dispose_all(extra)
        return entry

    def _give_back(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1
            done = entry.dropped and entry.pins == 0
        if done:
            self._dispose(entry.fd)

    # ---- dropping -------------------------------------------------------------------------------

    def discard(self, predicate: Callable[[K], bool]) -> None:
        """Drop every entry whose key satisfies `predicate` (pinned ones when given back)."""
        with self._lock:
            keys = [key for key in self._entries if predicate(key)]
            victims = [victim for key in keys for victim in self._drop(self._entries.pop(key))]
        self._dispose_all(victims)

    def close(self) -> None:
        """Dispose of every descriptor; a pinned one when it is given back. Later puts are disposed."""
        with self._lock:
            self._closed = True
            victims = [victim for entry in self._entries.values() for victim in self._drop(entry)]
            self._entries.clear()
        self._dispose_all(victims)

    def _drop(self, entry: _Entry | None) -> list[_Entry]:
        """Mark `entry` out of the cache (lock held); the entries to dispose of now."""
        if entry is None:
            return []
        if entry.pins:
            entry.dropped = True
            return []
        return [entry]

    def _evict(self) -> list[_Entry]:
        """Take the least recently used unpinned entries beyond the capacity out (lock held)."""
        excess = len(self._entries) - self.capacity
        if excess <= 0:
            return []
        victims = []
        for key, entry in self._entries.items():
            if entry.pins == 0:
                victims.append(key)
                if len(victims) == excess:
                    break
        return [self._entries.pop(key) for key in victims]

    def _dispose_all(self, entries: list[_Entry]) -> None:
        for entry in entries:
            self._dispose(entry.fd)
