"""A private mount namespace for this process: mounts made afterwards are seen by it and its
children only, and go away when the last of them exits.

One job: `unshare(CLONE_NEWNS)` and make every mount in the new namespace private, so that
neither a mount made here leaks out nor one made outside later (a volume removed, the browser
restarted) reaches in. `shadowfs exec` uses it to show each volume's snapshot at the volume's
own path to one command, the way a container sees its own filesystem.

Needs CAP_SYS_ADMIN (root); the error says so. Python 3.11 has no `os.unshare`: libc is called
through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        hint = ": run as root" if err == errno.EPERM else ""
        raise OSError(err, f"{what}: {os.strerror(err)}{hint}")


def enter_private_mount_namespace() -> None:
    """Move this process into a mount namespace of its own in which every mount is private."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None),
           "making / private (mount --make-rprivate)")


__all__ = ["enter_private_mount_namespace"]
