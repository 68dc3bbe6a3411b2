"""Shared pytest hooks: tests run layer by layer, opt-in soak tests, the one skip for FUSE tests
where FUSE is unusable, and the `daemon` fixture (tests/support/daemon.py).

The layers are the folders of tests/, run from the bottom up (LAYERS), so the first failure
reported is in the lowest layer that has one; a folder not in LAYERS still runs, last.

A soak test carries `@pytest.mark.soak` (tests/soak). It is deselected unless the run asks
for it: `pytest --soak` (what `tools/test --soak` passes on), SHADOWFS_SOAK=1 in the
environment, or a `-m` expression that names the marker. A soak test runs for longer than
faulthandler_timeout on purpose: its stacks are dumped only after SOAK_STACK_DUMP_AFTER.

A test that leaves a FUSE mount behind under its own tmp_path, after all its fixtures have
been torn down, fails at teardown; the mount is then unmounted. Mounts anywhere else (other
tests, other runs, other programs) are never looked at or touched.

A test that mounts (a live mount, the browser, a daemon) carries `@pytest.mark.fuse`; nothing
else skips for FUSE. It is skipped only when this machine cannot mount at all: /dev/fuse
missing or not openable, fusermount3 not installed, or not running as root (the mounts use
allow_other and open_by_handle_at). Where all of that holds the test runs, so a skip never
hides a failure on a machine where FUSE works.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowfs.linux import mounts
from tests.support.daemon import daemon  # noqa: F401  (the `daemon` fixture, shared by the end-to-end tests)

TESTS = Path(__file__).parent
LAYERS = ("unit", "core", "ops", "mount", "daemon", "e2e", "soak")
SOAK_STACK_DUMP_AFTER = 3 * 3600.0  # seconds; one soak test took 55 minutes on 2 busy cores


@functools.cache
def fuse_unusable_reason() -> str | None:
    """Why FUSE tests cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "FUSE tests need root (allow_other, open_by_handle_at)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="also run the long randomized soak tests (marked soak); as SHADOWFS_SOAK=1")


def soak_selected(config: pytest.Config) -> bool:
    return (bool(config.getoption("soak")) or os.environ.get("SHADOWFS_SOAK") == "1"
            or "soak" in (config.getoption("markexpr") or ""))


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = fuse_unusable_reason()
    return [f"FUSE tests: {'run' if reason is None else 'skipped, ' + reason}",
            f"soak tests: {'run' if soak_selected(config) else 'deselected (tools/test --soak runs them)'}"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Re-arm pytest's faulthandler timer (set for this test just before) with the soak timeout."""
    if item.get_closest_marker("soak") is None or not item.config.getini("faulthandler_timeout"):
        return
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        stderr = item.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        return  # another pytest: the stacks are dumped after faulthandler_timeout, and the test goes on
    faulthandler.dump_traceback_later(SOAK_STACK_DUMP_AFTER, file=stderr)


def layer_rank(item: pytest.Item) -> int:
    """Where the item's folder of tests/ stands in LAYERS; after them all if it is not one."""
    parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
    return LAYERS.index(parts[0]) if len(parts) > 1 and parts[0] in LAYERS else len(LAYERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=layer_rank)  # stable: within a layer, the order pytest found
    if not soak_selected(config):
        soak = [item for item in items if item.get_closest_marker("soak") is not None]
        if soak:
            config.hook.pytest_deselected(items=soak)
            items[:] = [item for item in items if item.get_closest_marker("soak") is None]
    fuse_reason = fuse_unusable_reason()
    if fuse_reason:
        for item in items:
            if item.get_closest_marker("fuse") is not None:
                item.add_marker(pytest.mark.skip(reason=f"FUSE not usable here: {fuse_reason}"))


@pytest.fixture(autouse=True)
def _no_fuse_mount_left_under_tmp_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a FUSE mount under its tmp_path (set up first, so checked last)."""
    yield
    tmp_path = (request.node.funcargs or {}).get("tmp_path")
    if tmp_path is None:
        return
    base = str(Path(tmp_path).resolve())
    left = sorted((point for point in mounts.fuse_mounts() if point == base or point.startswith(base + "/")),
                  key=len, reverse=True)
    if left:
        for point in left:
            mounts.unmount(point)
        pytest.fail("FUSE mounts left behind under the test's tmp_path (now unmounted): " + ", ".join(left),
                    pytrace=False)
