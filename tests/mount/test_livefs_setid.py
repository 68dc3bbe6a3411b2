"""Set-id bits on the live mount (pjdfstest chmod/12.t): a write, truncation or chown by a
caller without CAP_FSETID clears S_ISUID, and S_ISGID when the group may execute, as the
caller's own descriptor and every later stat see; root keeps them; an earlier snapshot
keeps the mode it saw, since the clearing is captured like any chmod.

The callers run in forked children that drop to uid and gid 65534 (no capabilities left).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pytest

from tests.mount import livefs_fixtures
from tests.mount.livefs_fixtures import LiveVolume

volume = livefs_fixtures.volume

pytestmark = pytest.mark.fuse

NOBODY = 65534
ROOT = 0
CLEARED = (0o4777, 0o2777, 0o6777)  # all three lose their set-id bits: 0o777
KEPT = (0o2767, 0o2666)  # set-gid without group execute (mandatory locking) is not cleared


def as_user(uid: int, action: Callable[[], int]) -> int:
    """Run `action` in a forked child as `uid` (gid the same, no supplementary groups); its result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            if uid != ROOT:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.write(write_end, str(action()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return int(out)


def write_and_fstat(path: str, flags: int, data: bytes = b"x") -> Callable[[], int]:
    """Open `path` with `flags`, write `data` at 0, and return the mode fstat shows on that descriptor."""
    def action() -> int:
        fd = os.open(path, flags)
        try:
            if data:
                os.pwrite(fd, data, 0)
            return stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    return action


def create_write_and_fstat(path: str, mode: int) -> Callable[[], int]:
    """Create `path` write-only with `mode` (no umask), write to it, return fstat's mode."""
    def action() -> int:
        os.umask(0)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            assert stat.S_IMODE(os.fstat(fd).st_mode) == mode
            os.write(fd, b"x")
            return stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    return action


def ftruncate_and_fstat(path: str) -> Callable[[], int]:
    def action() -> int:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, 1)
            return stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    return action


def changed_and_stat(path: str, change: Callable[[], None]) -> Callable[[], int]:
    """Apply `change`, then return the mode a stat of `path` shows."""
    def action() -> int:
        change()
        return stat.S_IMODE(os.stat(path).st_mode)
    return action


def make(vol: LiveVolume, name: str, mode: int, data: bytes = b"old data") -> str:
    path = vol.path(name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    return path


def modes(vol: LiveVolume, name: str) -> tuple[int, int]:
    """The mode through the mount and on the backing file."""
    return (stat.S_IMODE(os.stat(vol.path(name)).st_mode),
            stat.S_IMODE(os.stat(name, dir_fd=vol.backing_fd).st_mode))


FLAGS = {"wronly": os.O_WRONLY, "rdwr": os.O_RDWR}


def test_write_without_cap_fsetid_clears_set_id_bits(volume: LiveVolume) -> None:
    for how, flags in FLAGS.items():
        for mode in CLEARED:
            name = f"{how}-{mode:o}"
            path = make(volume, name, mode)
            assert as_user(NOBODY, write_and_fstat(path, flags)) == 0o777, name
            assert modes(volume, name) == (0o777, 0o777), name
            with open(path, "rb") as f:
                assert f.read() == b"xld data"
        for mode in KEPT:
            name = f"{how}-{mode:o}"
            path = make(volume, name, mode)
            assert as_user(NOBODY, write_and_fstat(path, flags)) == mode, name
            assert modes(volume, name) == (mode, mode), name
    # a file its non-root creator makes set-uid loses the bit on the creator's own write
    os.mkdir(volume.path("pub"), 0o777)
    os.chmod(volume.path("pub"), 0o777)
    created = volume.path("pub", "new")
    assert as_user(NOBODY, create_write_and_fstat(created, 0o4755)) == 0o755
    assert modes(volume, "pub/new") == (0o755, 0o755)


def test_write_by_root_keeps_set_id_bits(volume: LiveVolume) -> None:
    for how, flags in FLAGS.items():
        for mode in CLEARED:
            name = f"{how}-{mode:o}"
            path = make(volume, name, mode)
            assert as_user(ROOT, write_and_fstat(path, flags)) == mode, name
            assert modes(volume, name) == (mode, mode), name
            # and the file's next non-root writer still clears them
            assert as_user(NOBODY, write_and_fstat(path, flags)) == 0o777, name


def test_an_earlier_snapshot_keeps_the_mode_a_write_cleared(volume: LiveVolume) -> None:
    wronly = make(volume, "wronly", 0o6777)
    rdwr = make(volume, "rdwr", 0o4777)
    seq = volume.client.snapshot()
    assert as_user(NOBODY, write_and_fstat(wronly, os.O_WRONLY, b"new")) == 0o777
    assert as_user(NOBODY, write_and_fstat(rdwr, os.O_RDWR, b"new")) == 0o777
    later = volume.client.snapshot()
    with volume.reader(seq) as snap:
        assert stat.S_IMODE(snap.attr("wronly").mode) == 0o6777
        assert stat.S_IMODE(snap.attr("rdwr").mode) == 0o4777
        assert snap.read("wronly") == snap.read("rdwr") == b"old data"
    with volume.reader(later) as snap:
        assert stat.S_IMODE(snap.attr("wronly").mode) == stat.S_IMODE(snap.attr("rdwr").mode) == 0o777
        assert snap.read("wronly") == snap.read("rdwr") == b"new data"


def test_truncation_and_chown_without_cap_fsetid_clear_set_id_bits(volume: LiveVolume) -> None:
    truncations: dict[str, Callable[[str], Callable[[], int]]] = {
        "o_trunc": lambda path: write_and_fstat(path, os.O_WRONLY | os.O_TRUNC, b""),
        "o_trunc_rdwr": lambda path: write_and_fstat(path, os.O_RDWR | os.O_TRUNC, b""),
        "ftruncate": ftruncate_and_fstat,
        "truncate": lambda path: changed_and_stat(path, lambda: os.truncate(path, 1)),
    }
    for how, truncation in truncations.items():
        for mode in CLEARED:
            name = f"{how}-{mode:o}"
            path = make(volume, name, mode)
            assert as_user(NOBODY, truncation(path)) == 0o777, name
            assert modes(volume, name) == (0o777, 0o777), name
            assert os.stat(path).st_size < len(b"old data"), name
    # a root O_TRUNC keeps them
    path = make(volume, "root-o_trunc", 0o6777)
    assert as_user(ROOT, write_and_fstat(path, os.O_WRONLY | os.O_TRUNC, b"")) == 0o6777
    assert modes(volume, "root-o_trunc") == (0o6777, 0o6777)
    # chown by the owner (to its own group) clears them
    path = make(volume, "chgrp", 0o6777)
    os.chown(path, NOBODY, ROOT)
    os.chmod(path, 0o6777)
    assert as_user(NOBODY, changed_and_stat(path, lambda: os.chown(path, -1, NOBODY))) == 0o777
    assert modes(volume, "chgrp") == (0o777, 0o777)


def test_o_trunc_clearing_is_captured(volume: LiveVolume) -> None:
    path = make(volume, "f", 0o4777)
    seq = volume.client.snapshot()
    assert as_user(NOBODY, write_and_fstat(path, os.O_WRONLY | os.O_TRUNC, b"")) == 0o777
    with volume.reader(seq) as snap:
        assert stat.S_IMODE(snap.attr("f").mode) == 0o4777
        assert snap.read("f") == b"old data"
