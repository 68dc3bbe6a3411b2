"""The end-to-end snapshot workload at full size: 20,000 random changes over two volumes with 60
snapshot sets taken in between, some deleted in random order; every remaining set equals the
manifest taken at its instant, also after a daemon restart. The short run is in
tests/e2e/test_e2e_snapshots.py."""

from __future__ import annotations

import pytest

from tests.e2e.test_e2e_snapshots import random_workload_two_volumes
from tests.support.daemon import DaemonRun

pytestmark = [pytest.mark.fuse, pytest.mark.soak]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_workload_two_volumes_full_size(daemon: DaemonRun, seed: int) -> None:
    random_workload_two_volumes(daemon, seed, steps=20_000, sets=60)
