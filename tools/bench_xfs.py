"""The bench's `xfs` section (tools/bench --only xfs): the first overwrite after a snapshot on an
XFS volume, where the diff area's block file is on the volume and a capture can be a reflink.

It makes an XFS image on a loop device under the bench's work directory
(tests/support/loopfs.py), runs a volume on it beside a native directory of the same
image, and always removes the volume, unmounts the image and detaches the loop device.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tests.support import loopfs

MiB = 1 << 20


class BenchLike(Protocol):
    work: Path
    sizes: Any

    def cli(self, *args: str) -> Any: ...
    def add_volume(self, name: str, backing: Path) -> None: ...
    def snapshot(self, *volumes: str) -> dict[str, Any]: ...
    def record(self, key: str, title: str, unit: str, fs: str | None = None, **figures: float) -> None: ...


def first_overwrite_xfs(bench: BenchLike, write_file: Callable[[Path, int, bytes], None],
                        overwrite_file: Callable[[Path, int, bytes], None]) -> None:
    reason = loopfs.unavailable("xfs")
    if reason is not None:
        print(f"bench: xfs section skipped: {reason}")
        return
    size = bench.sizes.big
    base = bench.work / "xfs-image"
    base.mkdir()
    with loopfs.loop_filesystem("xfs", base, 4 * size + 512 * MiB) as mountpoint:
        native, live = mountpoint / "native", mountpoint / "vol"
        native.mkdir()
        live.mkdir()
        bench.add_volume("xfs", live)
        # the default limit (10% of this small image) is less than one overwrite captures
        bench.cli("volume", "set", "xfs", "--max-diff-area", str(4 * size))
        try:
            chunk, other = os.urandom(MiB), os.urandom(MiB)
            write_file(native / "big", size, chunk)
            write_file(live / "big", size, chunk)
            times: dict[str, list[float]] = {"native": [], "first": [], "second": []}
            for _ in range(bench.sizes.runs):  # each first overwrite right after a snapshot of its own
                set_id = bench.snapshot("xfs")["set_id"]
                times["native"].append(_timed(lambda: overwrite_file(native / "big", size, other)))
                times["first"].append(_timed(lambda: overwrite_file(live / "big", size, other)))
                times["second"].append(_timed(lambda: overwrite_file(live / "big", size, chunk)))
                bench.cli("snapshot", "delete", set_id)
            t = {name: statistics.median(values) for name, values in times.items()}
            mb = size / MiB
            bench.record("first_overwrite_xfs", f"overwrite {mb:.0f} MiB + fsync on XFS (block file on the "
                         "volume): first after a snapshot vs second (medians)", "s", fs="xfs",
                         native=t["native"], first=t["first"], second=t["second"],
                         ratio=t["first"] / t["second"])
        finally:
            bench.cli("volume", "remove", "xfs", "--force")


def _timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start
