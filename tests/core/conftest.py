"""Fixtures of the core layer: a plain backing directory changed through the production capture code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.coresim import CoreSim


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[CoreSim]:
    """A fresh `CoreSim`: backing directory and diff area under the test's own tmp_path."""
    backing = tmp_path / "backing"
    backing.mkdir()
    core = CoreSim(str(backing), str(tmp_path / "diffarea"))
    yield core
    core.close()
