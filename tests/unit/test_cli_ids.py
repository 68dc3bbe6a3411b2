"""Snapshot and set ids on the command line: full UUIDs, or unique prefixes of listed ids."""

from __future__ import annotations

import pytest

from shadowfs.cli.common import full_id, resolve_id
from shadowfs.errors import CliError

KNOWN = ["3f2a9c1e-0000-4000-8000-000000000001", "3f2a9c1e-1111-4000-8000-000000000002",
         "b7c01d2e-2222-4000-8000-000000000003"]


def test_a_full_id_is_taken_as_it_is_even_when_unknown() -> None:
    other = "0b2c6d4e-3333-4000-8000-000000000004"
    assert full_id(other.upper()) == other
    assert resolve_id(other, KNOWN) == other


def test_a_unique_prefix_names_its_id() -> None:
    assert resolve_id("b7c0", KNOWN) == KNOWN[2]
    assert resolve_id("3F2A9C1E-1", KNOWN) == KNOWN[1]


def test_an_ambiguous_prefix_is_refused_naming_the_candidates() -> None:
    with pytest.raises(CliError, match="start of 2 ids .*3f2a9c1e-0000.*3f2a9c1e-1111.*more characters"):
        resolve_id("3f2a9c1e", KNOWN)


@pytest.mark.parametrize("text, message", [
    ("abc", "invalid snapshot or set id 'abc'"),
    ("not-a-uuid", "invalid snapshot or set id 'not-a-uuid'"),
    ("dead", "no snapshot or set id starts with 'dead'"),
])
def test_bad_ids_are_named(text: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        resolve_id(text, KNOWN)
