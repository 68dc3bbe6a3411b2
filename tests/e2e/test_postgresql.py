"""PostgreSQL end to end: a real server on a shadowfs volume under a pgbench load, backed up through
the express writer shadowfs ships (`shadowfs/vss/manifests/postgresql.toml`), restored, started.

The server runs as `postgres` (setpriv; short commands through runuser), a child of the test, on a
unix socket in a private directory and no TCP port, with its cluster on a volume. A custom pgbench
script runs the TPC-B-like transaction and, first of all, takes the next id from a one-row counter
(so transactions commit in id order, one at a time past that row lock) and records it in
`committed`: the committed transactions are always exactly ids 1..n, n being the counter. Ten sets
are taken through `shadowfs backup` with the manifest's freeze (CHECKPOINT); the counter is read
just before each backup starts and just after it returns (with synchronous_commit on, a commit
another session can see has reached the WAL file). Each image is restored with `shadowfs restore
--to`, a server is started on the copy (crash recovery), and the copy must hold exactly ids 1..n
with n within those two counts, balances that agree with the history (no transaction torn), and
pass `pg_amcheck`.

Skipped, saying why, only where PostgreSQL is not installed (tools/test installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shadowfs.linux import mounts
from shadowfs.vss import express_manifest
from tests.support.daemon import DaemonRun
from tests.support.writers import ROOT, WriterProcs, writer_procs

TOOLS = ("postgres", "initdb", "pg_isready", "psql", "pgbench", "pg_amcheck")
SETS = 10
SCRIPT = """\
\\set aid random(1, 1000)
\\set bid 1
\\set tid random(1, 10)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE commit_counter SET n = n + 1;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, now());
INSERT INTO committed (id, delta) SELECT n, :delta FROM commit_counter;
END;
"""
SCHEMA = """
DELETE FROM pgbench_accounts WHERE aid > 1000;
VACUUM FULL pgbench_accounts;
CREATE TABLE commit_counter (n bigint NOT NULL);
INSERT INTO commit_counter VALUES (0);
CREATE TABLE committed (id bigint PRIMARY KEY, delta integer NOT NULL);
CREATE EXTENSION amcheck;
CHECKPOINT;
"""
# one row: ids held, lowest, highest, the counter, and the four sums that agree when no transaction is torn
CHECK = """
SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0), (SELECT n FROM commit_counter),
       coalesce(sum(delta), 0), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
       (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers)
FROM committed
"""


def postgres_bindir() -> Path | None:
    """The directory of the server's programs: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin, as long as it holds every program the test runs."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30,
                                 check=True)
            candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    return next((c for c in candidates if all((c / tool).is_file() for tool in TOOLS)), None)


def missing_reason() -> str | None:
    if postgres_bindir() is None:
        return ("PostgreSQL is not installed: no directory holds " + ", ".join(TOOLS) +
                " (pg_config --bindir, /usr/lib/postgresql/*/bin); apt-get install postgresql "
                "postgresql-contrib (tools/test does)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no user 'postgres' (the postgresql package makes it; the server must not run as root)"
    if shutil.which("runuser") is None or shutil.which("setpriv") is None:
        return "runuser or setpriv (util-linux) is not installed"
    return None


MISSING = missing_reason()
pytestmark = [pytest.mark.fuse, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(*argv: str | Path, env: dict[str, str] | None = None, check: bool = True,
                timeout: float = 120, stdin: str = "") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], capture_output=True,
                            text=True, env={**os.environ, **(env or {})}, cwd="/", timeout=timeout,
                            check=False, input=stdin)
    if check:
        assert result.returncode == 0, f"{argv}: exit {result.returncode}: {result.stderr}{result.stdout}"
    return result


def postgres_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam("postgres")
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


def as_postgres_process(*argv: str | Path, log: Path, env: dict[str, str] | None = None
                        ) -> subprocess.Popen[bytes]:
    """A long-running program as postgres, a child of this process (setpriv execs it: no process in
    between), so the test itself reaps it, also where PID 1 does not reap orphans."""
    with open(log, "ab") as out:
        return subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                                 *map(str, argv)], env={**os.environ, **(env or {})}, cwd="/", stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Server:
    """One PostgreSQL server (postmaster) as a child of the test, on a unix socket only (no TCP)."""

    bindir: Path
    data: Path
    sockets: Path
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": str(self.sockets), "PGPORT": str(self.port), "PGDATABASE": "postgres"}

    def start(self) -> None:
        self.process = as_postgres_process(self.bindir / "postgres", "-D", self.data, "-k", self.sockets,
                                           "-p", str(self.port), "-c", "listen_addresses=", log=self.log)
        deadline = time.monotonic() + 120  # a copy first replays its WAL
        while as_postgres(self.bindir / "pg_isready", "-q", env=self.env, check=False).returncode != 0:
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server did not start: {self.log.read_text()[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it takes more than a minute."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def sql(self, text: str) -> list[str]:
        result = as_postgres(self.bindir / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                             "-f", "-", env=self.env, stdin=text)
        return result.stdout.split()

    def count(self) -> int:
        return int(self.sql("SELECT n FROM commit_counter")[0])


@dataclass
class Setup:
    bindir: Path
    root: Path                   # every path the postgres user reaches lies under it
    volume: Path
    live: Server
    restored: list[Server] = field(default_factory=list)
    pgbench: subprocess.Popen[bytes] | None = None


@pytest.fixture
def pg(daemon: DaemonRun, writers: WriterProcs) -> Iterator[Setup]:
    bindir = postgres_bindir()
    assert bindir is not None
    # not under tmp_path: pytest's directories are private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="shadowfs-pg-", dir="/tmp"))
    root.chmod(0o711)
    volume = root / "vol"
    volume.mkdir()
    logs = postgres_dir(root / "logs", 0o755)
    setup = Setup(bindir, root, volume, Server(bindir, volume / "cluster", postgres_dir(root / "sock"),
                                                 logs / "live.log"))
    try:
        daemon.cli("volume", "add", "pg", str(volume))
        daemon.wait_ready()
        yield setup
    finally:
        if setup.pgbench is not None and setup.pgbench.poll() is None:
            os.killpg(setup.pgbench.pid, signal.SIGKILL)
            setup.pgbench.wait()
        for server in [setup.live, *setup.restored]:
            server.stop()
        writers.stop_all()
        daemon.cleanup()  # unprotects the volume: nothing of ours stays mounted under root
        left = [point for point in mounts.fuse_mounts() if point.startswith(str(root) + "/")]
        if not left:
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"still mounted: {left}"


@pytest.fixture
def writers(daemon: DaemonRun) -> Iterator[WriterProcs]:
    yield from writer_procs(daemon)


def cli(daemon: DaemonRun, *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "shadowfs", *args], env=daemon.env, capture_output=True,
                            text=True, timeout=300, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def the_shipped_manifest_for(data: Path, destination: Path) -> Path:
    """The PostgreSQL manifest shadowfs ships, with its data directory changed to `data` (as a user
    edits it), and nothing else changed."""
    shipped = express_manifest.shipped()["postgresql"]
    [component] = express_manifest.load(shipped).template.components
    [spec] = component.database_files
    text = Path(shipped).read_text()
    destination.write_text(text.replace(f'"{spec.path}"', f'"{data}"'))
    edited = express_manifest.load(str(destination))
    assert [s.path for s in edited.template.components[0].database_files] == [str(data)]
    assert {e.path for e in edited.template.excluded_files} == {str(data)}
    return destination


def test_ten_sets_under_pgbench_restore_to_servers_holding_committed_prefixes(
        daemon: DaemonRun, writers: WriterProcs, pg: Setup) -> None:
    live = pg.live
    postgres_dir(live.data)
    as_postgres(pg.bindir / "initdb", "-D", live.data, "-U", "postgres", "--auth-local=peer",
                "--auth-host=reject", "-E", "UTF8", "--locale=C", "--wal-segsize=1", "-N")
    with open(live.data / "postgresql.conf", "a") as conf:
        conf.write("log_checkpoints = on\nmax_wal_size = 64MB\nmin_wal_size = 4MB\nshared_buffers = 16MB\n")
    live.start()
    as_postgres(pg.bindir / "pgbench", "-i", "-s", "1", "-q", env=live.env)
    live.sql(SCHEMA)
    script = pg.root / "load.sql"
    script.write_text(SCRIPT)
    script.chmod(0o644)

    manifest = the_shipped_manifest_for(live.data, daemon.base / "postgresql.toml")
    writers.start_express("PostgreSQL", manifest, env=live.env)
    writers.wait_registered("PostgreSQL")

    load_log = pg.root / "logs" / "pgbench.log"
    pg.pgbench = as_postgres_process(pg.bindir / "pgbench", "-n", "-c", "2", "-j", "2", "-T", "900",
                                     "-f", script, log=load_log, env=live.env)
    deadline = time.monotonic() + 60
    while live.count() < 50:
        assert pg.pgbench.poll() is None, load_log.read_text()
        assert time.monotonic() < deadline, f"the load did not start: {load_log.read_text()}"
        time.sleep(0.05)

    store = str(pg.root / "media")
    taken = []
    for _ in range(SETS):
        before = live.count()
        image = cli(daemon, "backup", "--media", store, "--type", "full", "pg", "--json")
        after = live.count()
        assert [(c["component"], c["succeeded"]) for c in image["components"]] == [("cluster", True)], image
        taken.append((image["image"], before, after))
    assert pg.pgbench.poll() is None, load_log.read_text()
    os.killpg(pg.pgbench.pid, signal.SIGKILL)
    pg.pgbench.wait()
    assert not re.search(r"aborted|ERROR|FATAL", load_log.read_text()), load_log.read_text()

    held = []
    for index, (image, before, after) in enumerate(taken):
        target = pg.root / f"restore-{index}"
        cli(daemon, "restore", "--media", store, "--image", image, "--to", str(target), "--json")
        data = target / "pg" / "cluster"
        assert not (data / "postmaster.pid").exists()  # excluded by the manifest
        assert data.stat().st_uid == pwd.getpwnam("postgres").pw_uid and data.stat().st_mode & 0o777 == 0o700
        copy = Server(pg.bindir, data, postgres_dir(target / "sock"), pg.root / "logs" / f"copy-{index}.log")
        pg.restored.append(copy)
        copy.start()
        rows, low, high, counter, committed_sum, history_sum, accounts, tellers = map(int, copy.sql(CHECK)[0]
                                                                                      .split("|"))
        assert rows == high == counter and low == (1 if rows else 0), (index, rows, low, high, counter)
        assert before <= counter <= after, (index, before, counter, after)
        assert committed_sum == history_sum == accounts == tellers, (index, committed_sum, history_sum,
                                                                     accounts, tellers)
        check = as_postgres(pg.bindir / "pg_amcheck", "--all", "--install-missing", "--heapallindexed",
                            env=copy.env, check=False)
        assert check.returncode == 0, f"set {index}: pg_amcheck: {check.stdout}{check.stderr}"
        copy.stop()
        # a copy of a running server: it recovered from its WAL, as after a power cut
        assert "automatic recovery in progress" in copy.log.read_text(), copy.log.read_text()
        shutil.rmtree(target)
        held.append(counter)
    print(f"pgbench: {live.count()} transactions; the ten sets held {held}")
    assert held == sorted(held) and held[-1] > held[0]
    freezes = live.log.read_text().count("checkpoint starting: immediate force wait")
    assert freezes >= SETS, f"{freezes} CHECKPOINTs asked for, {SETS} sets"
    [status] = [w for w in daemon.cli("writers", "--json") if w["writer_name"] == "PostgreSQL"]
    assert status["last_failure"] is None, status
