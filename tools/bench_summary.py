"""Summarise several `tools/bench --json` runs as one Markdown table (for the README).

    .venv/bin/python tools/bench_summary.py run1.json run2.json run3.json

One row per figure: its work, the filesystem it ran on, the judged figure of each run
(the figures its target names, else `ratio`), the target, and in how many runs
the target was met. Nothing is typed in by hand: every number comes from the files.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def judged_figures(row: dict[str, Any]) -> list[str]:
    target = row.get("target", "")
    return [check.split()[0] for check in target.split("; ")] if target else ["ratio"]


def cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary(runs: list[dict[str, dict[str, Any]]]) -> str:
    keys: list[str] = []
    for run in runs:
        keys.extend(key for key in run if key not in keys)
    lines = ["| key | work | fs | " + " | ".join(f"run {n + 1}" for n in range(len(runs)))
             + " | target | met |",
             "|---|---|---|" + "---|" * len(runs) + "---|---|"]
    for key in keys:
        rows = [run.get(key) for run in runs]
        first = next(row for row in rows if row is not None)
        figures = judged_figures(first)
        values = [", ".join(f"{figure} {cell(row.get(figure, '-'))}" for figure in figures)
                  if row is not None else "-" for row in rows]
        met = [row["met"] for row in rows if row is not None and "met" in row]
        verdict = f"{sum(met)} of {len(met)}" if met else "-"
        lines.append(f"| `{key}` | {first['title']} [{first['unit']}] | {first.get('fs', '-')} | "
                     + " | ".join(values) + f" | {first.get('target', '-')} | {verdict} |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    print(summary(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
