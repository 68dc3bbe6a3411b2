"""Who owns a new object of the live mount, and which mode bits changes keep or clear.

One job: the kernel's ownership and set-id rules, which the live mount applies
itself because it creates and changes objects as root on the caller's behalf:
a new object belongs to the caller (a set-group-id directory gives its group),
keeps its set-id bits only as the kernel would let it, and a write, truncate
or chown by a caller without CAP_FSETID clears them. Also the classic
owner/group/other check for `access` without default_permissions.

Invariant: pure functions of a stat result, a mode and the request context
(plus `pyfuse3.get_sup_groups`); no descriptor is opened or kept.
"""

from __future__ import annotations

import os
import stat

import pyfuse3


def set_id_cleared(mode: int) -> int:
    """The set-id bits that a write, truncate or chown by a caller without CAP_FSETID clears.

    S_ISUID, and S_ISGID when the group may execute (without group execute it marks
    mandatory locking); the kernel's FUSE side computes the same (`fuse_setattr`).
    """
    cleared = mode & stat.S_ISUID
    if mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
        cleared |= stat.S_ISGID
    return cleared if stat.S_ISREG(mode) else 0


def owner(ctx: pyfuse3.RequestContext, parent_fd: int) -> tuple[int, int]:
    """(uid, gid) of a new object made by the caller of `ctx` (setgid parents give their group)."""
    parent = os.fstat(parent_fd)
    return ctx.uid, parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid


def special_bits(ctx: pyfuse3.RequestContext, mode: int, gid: int) -> int:
    """The set-id bits a new non-directory keeps (chown by root clears them)."""
    bits = mode & (stat.S_ISUID | stat.S_ISGID)
    if bits & stat.S_ISGID and ctx.uid != 0 and gid != ctx.gid:
        if gid not in pyfuse3.get_sup_groups(ctx.pid):
            bits &= ~stat.S_ISGID
    return bits


def permits(st: os.stat_result, mode: int, ctx: pyfuse3.RequestContext) -> bool:
    """The classic owner/group/other permission check of `mode` for the caller of `ctx`."""
    if ctx.uid == 0:
        return not mode & os.X_OK or bool(st.st_mode & 0o111) or stat.S_ISDIR(st.st_mode)
    if st.st_uid == ctx.uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return mode & granted == mode
