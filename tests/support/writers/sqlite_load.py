"""A continuous insert load on a SQLite database, run in a process of its own (multiprocessing, spawn).

Transaction n inserts `ROWS_PER_TX` rows (tx = n, k = 0..ROWS_PER_TX-1) and
commits. `attempted` is set to n before the COMMIT and `committed` after it
returns (which can be long after the commit itself: the committing connection
runs SQLite's automatic checkpoint inside the call). So at any moment every
transaction <= `committed` has committed and none > `attempted` has.
"""

from __future__ import annotations

import sqlite3
from typing import Any

ROWS_PER_TX = 3
SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, k INTEGER NOT NULL, pad TEXT)"


def create(db: str) -> None:
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)


def run(db: str, attempted: Any, committed: Any, stop: Any) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=120)
    conn.execute("PRAGMA synchronous=NORMAL")
    tx = 0
    while not stop.is_set():
        tx += 1
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t(tx, k, pad) VALUES(?, ?, 'xxxxxxxx')",
                         [(tx, k) for k in range(ROWS_PER_TX)])
        attempted.value = tx
        conn.execute("COMMIT")
        committed.value = tx
    conn.close()


def committed_prefix(db: str) -> int:
    """The number of transactions in `db`; AssertionError unless they are exactly 1..n, each whole."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT tx, count(*), min(k), max(k) FROM t GROUP BY tx ORDER BY tx").fetchall()
    torn = [r for r in rows if r[1:] != (ROWS_PER_TX, 0, ROWS_PER_TX - 1)]
    assert not torn, f"torn transactions: {torn[:5]}"
    txs = [r[0] for r in rows]
    assert txs == list(range(1, len(txs) + 1)), f"not a prefix: gaps after {txs[:3]}...{txs[-3:]}"
    return len(txs)
