"""What the CLI prints on stdout: JSON, tables and sizes.

One job: one form for each kind of output, so every command prints alike.

Invariants:
- Stdout carries the command's result only (progress and errors go to stderr;
  with --json a failure's JSON object is the result).
- Every size is `statedir.format_size` ("1.5K", "10G"), in tables and in
  sentences, and "-" where the daemon has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from shadowfs import statedir


def print_json(obj: object) -> None:
    """`obj` as indented JSON with sorted keys."""
    print(json.dumps(obj, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns two spaces apart, headers first."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def size(value: object) -> str:
    """A number of bytes in the short human form; "-" for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return statedir.format_size(value)
