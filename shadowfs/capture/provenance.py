"""Who made a change: the author of a captured change, resolved only when its pre-image is stored.

One job: design §3.14 on the capture side. The live mount hands each change's
`Caller` (pyfuse3's request context: uid, gid and pid as the kernel gave them;
for a write, the caller that opened the file) and the request's name to the
planner with the change; a plan that needs a capture carries them into its
committer job. There, when the engine stores an attribute or directory-entry
pre-image, the job's `Authorship` is resolved once into an
`schema.AuthorRecord`: the command name read from ``/proc/<pid>/comm`` and the
wall-clock time. The caller is still waiting for its change then (the change
is applied only after the commit), so its process is there to be asked.

Invariants:
- A change that needs no capture does no work here: nothing is read, built or
  stored; only the caller object (which the request brought anyway) is passed
  along. A capture of data blocks only (the file's attributes were captured
  earlier in the same snapshot) resolves nothing either.
- The command name is read when the record is made, not cached across
  changes: a process keeps its pid across exec (a shell that forks, opens a
  redirection and then runs a program), so a cached name could be another
  program's. `CommandNames` remembers the last name read of each pid (a
  bounded number) only for a process that has exited before it could be
  asked: then that name, or b"" if it never was read.
- Runs on the committer thread; no pyfuse3, no trio.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol

from shadowfs.diffarea.schema import AuthorRecord, encode_author

NAMES_REMEMBERED = 1024  # pids whose last command name is kept for after they exit
_U32 = 0xFFFFFFFF


class Caller(Protocol):
    """Who asks for a change: what a FUSE request says of its caller (pyfuse3.RequestContext)."""

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def pid(self) -> int: ...


class CommandNames:
    """Command names of processes, from ``/proc/<pid>/comm`` when asked."""

    def __init__(self, proc: str = "/proc", limit: int = NAMES_REMEMBERED) -> None:
        self.proc = proc
        self.limit = limit
        self.reads = 0  # how many times /proc was asked (what a change that needs no capture never costs)
        self._last: dict[int, bytes] = {}

    def name(self, pid: int) -> bytes:
        """The command name of `pid` now; of a process that is gone, the last one read, or b""."""
        self.reads += 1
        try:
            fd = os.open(f"{self.proc}/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return self._last.get(pid, b"")
        try:
            name = os.read(fd, 64).rstrip(b"\n")
        except OSError:
            return self._last.get(pid, b"")
        finally:
            os.close(fd)
        self._last.pop(pid, None)
        self._last[pid] = name
        if len(self._last) > self.limit:
            del self._last[next(iter(self._last))]  # the longest not read
        return name


class Authorship:
    """The author of one committer job's changes: resolved on first use, then the same record
    for every pre-image the job stores (a rename's two entries and two objects)."""

    def __init__(self, names: CommandNames, caller: Caller, op: str,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self._names = names
        self._caller = caller
        self._op = op
        self._clock = clock
        self._value: bytes | None = None

    def value(self) -> bytes:
        """The encoded `AuthorRecord`."""
        if self._value is None:
            caller = self._caller  # ids as the kernel's 32-bit fields hold them: never a failed capture
            uid, gid, pid = caller.uid & _U32, caller.gid & _U32, caller.pid & _U32
            self._value = encode_author(AuthorRecord(uid, gid, pid, self._clock(), self._names.name(pid),
                                                     self._op))
        return self._value
