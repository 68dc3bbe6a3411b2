"""Take over a live FUSE connection: a new process serves a mount whose serving process died.

One job: let a process go on serving a mounted FUSE file system through a
descriptor of its connection (``/dev/fuse``) that outlived the process that
served it, without unmounting anything (issue #11). The kernel keeps a
connection, its mount and every request queued on it for as long as one
descriptor of the connection is open. So a keeper (the daemon, once it is
wired to this; today the tests in tests/mount/test_handoff.py) holds a
duplicate of the mount's descriptor (`session_fd` in the mount process, sent
with SCM_RIGHTS), and when the process dies it starts a new one that calls
`take_over` on its inherited copy:

```
write FUSE_NOTIFY_RESEND to N             the kernel queues again what the dead process had read
pyfuse3.init(ops, "/dev/fd/N", options)   libfuse uses descriptor N instead of mounting
pyfuse3.resume()                          the FUSE_INIT the kernel sent only to the first process
pyfuse3.main()                            the caller's loop, as after a mount: the requests resent come first
```

`session_fd` and `resume` come from the handoff patch of pyfuse3
(patches/pyfuse3/, built and installed by tools/_setup.sh); `can_take_over`
says whether the installed pyfuse3 has them. The resend needs Linux 6.9.

Invariants:
- Nothing is unmounted, and the directory under the mount point is never
  exposed: ``stat(mount point).st_dev`` stays what it was, requests made while
  no process served the mount wait, and the new process answers them.
- One process serves a connection at a time: `take_over` is called only after
  the previous process has exited (and been waited for). Beside a live server,
  both would read the same queue, and the resend would hand the new process
  requests the old one is still answering.
- The new process serves the same `Operations` class with the same mount
  options, so libfuse sets the session up as it did for the first process
  (buffer size, maximum write size, capabilities). Nothing the dead process
  held in memory survives: file handles and inode numbers it gave the kernel
  must mean the same to its successor.
- ``ops.init()`` runs inside `take_over`, outside any trio loop unless the
  caller runs `take_over` from one (the first process runs it from
  ``pyfuse3.main()``). What it did for the first process on the kernel's side
  stays done: `fuse_adapter.raise_readahead_after_init` is neither needed nor
  usable there.
- Once ``pyfuse3.init`` has accepted ``fuse_fd``, the pyfuse3 session owns it
  and ``pyfuse3.close()`` closes it; `take_over` closes the session itself when
  it fails after that point.
- A descriptor without a mounted connection is refused before libfuse or
  ``ops.init()`` run (the kernel answers EPERM to the resend). A kernel that
  only lacks the resend (EINVAL, before 6.9) does not stop the take-over: the
  new process serves every new request, and a warning says that the requests
  the dead process had read stay unanswered (`resend` raises instead).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from collections.abc import Iterable

import pyfuse3

from shadowfs.errors import TakeOverError

log = logging.getLogger(__name__)

FUSE_DEVICE = os.makedev(10, 229)  # /dev/fuse, a misc device with a fixed minor
FUSE_NOTIFY_RESEND = 7  # enum fuse_notify_code, <linux/fuse.h> (protocol 7.40, Linux 6.9)
# struct fuse_out_header: len, error (a notification's code), unique (0: a notification)
OUT_HEADER = struct.Struct("=IiQ")
RESEND_SINCE = "6.9"


def can_take_over() -> bool:
    """Whether the installed pyfuse3 has the handoff patch (`pyfuse3.session_fd`, `pyfuse3.resume`)."""
    return callable(getattr(pyfuse3, "session_fd", None)) and callable(getattr(pyfuse3, "resume", None))


def _require_patch() -> None:
    if not can_take_over():
        raise TakeOverError(f"pyfuse3 {pyfuse3.__version__} has no session_fd() and resume(): it lacks "
                            "the handoff patch (patches/pyfuse3), which tools/_setup.sh installs")


def session_fd() -> int:
    """The ``/dev/fuse`` descriptor of this process's pyfuse3 session (after ``pyfuse3.init``).

    It stays the session's: to keep the mount alive beyond this process, send
    it to the daemon (SCM_RIGHTS makes a copy there).
    """
    _require_patch()
    try:
        return pyfuse3.session_fd()
    except RuntimeError as exc:
        raise TakeOverError(f"no FUSE session to take the descriptor of: {exc}") from None


def check_fuse_fd(fuse_fd: int) -> None:
    """Raise TakeOverError unless `fuse_fd` is an open descriptor of ``/dev/fuse``."""
    try:
        info = os.fstat(fuse_fd)
    except OSError as exc:
        raise TakeOverError(f"descriptor {fuse_fd} of a FUSE connection: {exc.strerror}") from None
    if not stat.S_ISCHR(info.st_mode) or info.st_rdev != FUSE_DEVICE:
        raise TakeOverError(f"descriptor {fuse_fd} is not a FUSE connection (/dev/fuse)")


def take_over(ops: pyfuse3.Operations, fuse_fd: int, options: Iterable[str]) -> None:
    """Serve the mounted FUSE connection `fuse_fd` with `ops`, as its first process did.

    `options` are the mount options the first process passed to
    ``pyfuse3.init``. Afterwards run ``pyfuse3.main()`` as after a mount; the
    mount stays where it is, and ``pyfuse3.close(unmount=...)`` cannot
    unmount it (libfuse does not know where it is mounted): its owner does.
    Raises TakeOverError when the connection cannot be served (a descriptor
    without a mounted connection among them); a kernel that only lacks the
    resend is logged, and the take-over goes on.

    The resend comes first: it finds out whether the descriptor has a
    connection before libfuse and ``ops.init()`` run, and what it queues
    again waits, unread, until ``pyfuse3.main()`` reads it.
    """
    _require_patch()
    check_fuse_fd(fuse_fd)
    refused = _write_resend(fuse_fd)
    if refused is not None and refused.errno != errno.EINVAL:
        raise TakeOverError(_refusal(fuse_fd, refused))
    try:
        pyfuse3.init(ops, f"/dev/fd/{fuse_fd}", set(options))
    except RuntimeError as exc:
        raise TakeOverError(f"libfuse cannot use FUSE descriptor {fuse_fd}: {exc}") from None
    try:
        pyfuse3.resume()
    except RuntimeError as exc:
        pyfuse3.close(unmount=False)
        raise TakeOverError(f"libfuse did not resume the FUSE connection on descriptor {fuse_fd}: "
                            f"{exc}") from None
    except BaseException:  # ops.init() failed: its exception says why
        pyfuse3.close(unmount=False)
        raise
    if refused is not None:
        log.warning("%s", _refusal(fuse_fd, refused))
    log.info("took over the FUSE connection on descriptor %d", fuse_fd)


def resend(fuse_fd: int) -> None:
    """Have the kernel queue again every request of the connection that was read but not answered.

    Those are the requests a dead process had taken; the kernel marks them
    (bit 63 of their id) and the next read returns them first. Raises
    TakeOverError, saying what stays unanswered, when the kernel refuses.
    """
    refused = _write_resend(fuse_fd)
    if refused is not None:
        raise TakeOverError(_refusal(fuse_fd, refused))


def _write_resend(fuse_fd: int) -> OSError | None:
    """Write FUSE_NOTIFY_RESEND to the connection; the kernel's refusal, if it refused."""
    try:
        os.write(fuse_fd, OUT_HEADER.pack(OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))
    except OSError as exc:
        return exc
    return None


def _refusal(fuse_fd: int, exc: OSError) -> str:
    if exc.errno == errno.EPERM:  # the kernel's answer to any write on a descriptor without a connection
        return (f"FUSE descriptor {fuse_fd} has no connection: no file system was mounted with it, "
                "so there is nothing to take over")
    why = exc.strerror
    if exc.errno == errno.EINVAL:
        why = (f"{exc.strerror}; Linux {os.uname().release} does not know the notification, "
               f"which came with {RESEND_SINCE}")
    return (f"the kernel refused FUSE_NOTIFY_RESEND on FUSE descriptor {fuse_fd} ({why}): requests the "
            "previous process had read stay unanswered until the mount is unmounted or its connection "
            "aborted")
