"""Shared pytest hooks: opt-in soak tests, a clear skip for FUSE tests where FUSE is unusable,
and the `daemon` fixture (tests/support/daemon.py).

A `fuse` test is skipped only when /dev/fuse or fusermount3 is missing, or when
not running as root; it never hides a failure on a machine where FUSE works.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.daemon import daemon  # noqa: F401  (the `daemon` fixture, shared by the end-to-end tests)


def fuse_unusable_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    if os.geteuid() != 0:
        return "FUSE tests need root (allow_other, open_by_handle_at)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    soak = os.environ.get("SHADOWFS_SOAK") == "1"
    fuse_reason = fuse_unusable_reason()
    for item in items:
        if "soak" in item.keywords and not soak:
            item.add_marker(pytest.mark.skip(reason="soak test: run with tools/test --soak"))
        if "fuse" in item.keywords and fuse_reason:
            item.add_marker(pytest.mark.skip(reason=f"FUSE not usable here: {fuse_reason}"))
