"""The shadowfs demo: protect two trees, keep writing, take snapshot sets,
browse them, rsync one out and verify it against what the trees held at the
instant; then the backup story: a SQLite writer under an insert load, a full
and an incremental `shadowfs backup` onto media under `.demo/media`, `shadowfs
media verify`, a restore elsewhere, and a check that the restored database
passes `PRAGMA integrity_check` and holds a prefix of the committed rows.
Run through `tools/demo`, which installs what is missing first; the exit code
is 0 only when every check passed.

State lives in `.demo/` in the repository, mounts under `mountpoints/`.
With --keep the daemon stays up afterwards so the sets can be browsed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shadowfs import statedir  # noqa: E402
from shadowfs.linux import mounts  # noqa: E402
from shadowfs.manifest import differences, manifest  # noqa: E402

DEMO = REPO / ".demo"
STATE = DEMO / "state"
MOUNT_ROOT = REPO / "mountpoints"
SHADOWFS = [sys.executable, "-m", "shadowfs"]
ENV = {**os.environ, "SHADOWFS_STATE": str(STATE), "SHADOWFS_MOUNT_ROOT": str(MOUNT_ROOT)}


def say(text: str = "") -> None:
    print(text, flush=True)


def cli(*args: str) -> Any:
    result = subprocess.run(SHADOWFS + list(args), env=ENV, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: shadowfs {' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout) if "--json" in args else result.stdout


def stop_previous() -> None:
    """Stop a daemon left running by an earlier `--keep` run, then clear its state."""
    result = subprocess.run(SHADOWFS + ["status", "--json"], env=ENV, capture_output=True, text=True,
                            check=False)
    if result.returncode == 0:
        pid = json.loads(result.stdout)["pid"]
        say(f"stopping the demo daemon left running earlier (pid {pid}) and unprotecting its volumes")
        subprocess.run(SHADOWFS + ["stop", "--unprotect"], env=ENV, capture_output=True, check=False)
    # mount processes outlive their daemon: end any left by a demo daemon that was killed
    for pid in statedir.mount_process_pids(str(STATE)):
        say(f"stopping a mount process left running earlier (pid {pid})")
        os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not statedir.mount_process_pids(str(STATE)):
            break
        time.sleep(0.1)
    for point in sorted(mounts.fuse_mounts(), key=len, reverse=True):
        if point.startswith(str(DEMO) + "/") or point.startswith(str(MOUNT_ROOT) + "/"):
            mounts.unmount(point)
    if DEMO.exists():
        shutil.rmtree(DEMO)
    for child in MOUNT_ROOT.iterdir() if MOUNT_ROOT.exists() else []:
        if child.name != ".gitkeep" and not mounts.is_fuse_mount(str(child)):
            shutil.rmtree(child, ignore_errors=True)


def start_daemon() -> subprocess.Popen[bytes]:
    DEMO.mkdir(parents=True, exist_ok=True)
    log = open(DEMO / "daemon.log", "ab")  # noqa: SIM115  (lives as long as the daemon)
    proc = subprocess.Popen(SHADOWFS + ["daemon"], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"demo: daemon exited with {proc.returncode}; see {DEMO / 'daemon.log'}")
        result = subprocess.run(SHADOWFS + ["status", "--wait", "--json"], env=ENV, capture_output=True,
                                check=False)
        if result.returncode == 0:
            return proc
        time.sleep(0.1)
    raise SystemExit("demo: daemon did not start in 60 s")


def make_tree(root: Path) -> None:
    (root / "reports" / "2026").mkdir(parents=True)
    for month in range(1, 13):
        (root / "reports" / "2026" / f"{month:02}.txt").write_text(f"report for month {month}\n" * 500)
    (root / "notes.md").write_text("# notes\n\nshadowfs keeps what was.\n")
    (root / "latest").symlink_to("reports/2026/12.txt")
    os.link(root / "notes.md", root / "notes-hardlink.md")
    os.setxattr(root / "notes.md", "user.origin", b"demo")
    os.mkfifo(root / "pipe")
    (root / "big.bin").write_bytes(os.urandom(8 << 20))


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {path} did not appear")
        time.sleep(0.05)


ROWS_PER_TX = 3


class InsertLoad:
    """A light insert load in a thread: transaction n inserts ROWS_PER_TX rows (tx = n)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.committed = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.db, isolation_level=None, timeout=60)
            tx = 0
            while not self.stop.is_set():
                tx += 1
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO t(tx, k) VALUES(?, ?)", [(tx, k) for k in range(ROWS_PER_TX)])
                conn.execute("COMMIT")
                self.committed = tx
                time.sleep(0.002)
            conn.close()
        except BaseException as exc:  # reported by the demo
            self.error = exc


def committed_prefix(db: Path) -> tuple[str, int]:
    """(integrity_check answer, number of transactions); ValueError unless they are exactly 1..n, whole."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT tx, count(*) FROM t GROUP BY tx ORDER BY tx").fetchall()
    txs = [tx for tx, _ in rows]
    if any(n != ROWS_PER_TX for _, n in rows) or txs != list(range(1, len(txs) + 1)):
        raise ValueError(f"the restored rows are not a prefix of whole transactions ({len(txs)} found)")
    return str(check), len(txs)


def wait_writer(name: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the {name} writer exited with {proc.returncode}")
        if any(w["writer_name"] == name for w in cli("writers", "--json")):
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: the {name} writer did not register")


def backup_story(data: Path) -> bool:
    """The SQLite writer, a full and an incremental backup, verify, restore elsewhere, check."""
    say("\n== backup story: a SQLite writer under load ==")
    db = data / "app.db"
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, k INTEGER NOT NULL)")
    media = DEMO / "media"
    log = open(DEMO / "sqlite-writer.log", "ab")  # noqa: SIM115  (lives as long as the writer)
    writer = subprocess.Popen(SHADOWFS + ["writer", "sqlite", "--db", str(db)], env=ENV, stdout=log,
                              stderr=subprocess.STDOUT)
    load = InsertLoad(db)
    try:
        wait_writer("SQLite", writer)
        load.thread.start()
        time.sleep(0.5)
        full = cli("backup", "--media", str(media), "--type", "full", "data", "--keep-snapshot", "--json")
        say(f"full backup {full['image']}: {full['files']} files, components "
            + ", ".join(f"{c['writer']}:{c['component']} ({c['type']}, "
                        f"{'ok' if c['succeeded'] else 'FAILED'})" for c in full["components"]))
        time.sleep(0.5)
        before_inc = load.committed
        inc = cli("backup", "--media", str(media), "--type", "incremental", "data", "--json")
        how = ("only what the diff area says changed since the full backup's set, by inode"
               if "data" in inc["direct"] else "every file, compared with the full backup")
        say(f"incremental backup {inc['image']} on {inc['base']}: {inc['files']} files "
            f"({before_inc} transactions committed when it started); it read {how}")
        cli("snapshot", "delete", full["set_id"])  # kept only as the incremental's base
    finally:
        load.stop.set()
        if load.thread.is_alive():
            load.thread.join(timeout=30)
    verify = cli("media", "verify", "--media", str(media), "--json")
    say(f"shadowfs media verify: {verify['images']} image(s), "
        f"{'no problems' if verify['ok'] else verify['problems']}")
    target = DEMO / "restored"
    restored = cli("restore", "--media", str(media), "--image", inc["image"], "--to", str(target), "--json")
    say(f"restored chain {' -> '.join(restored['chain'])} to {target}")
    writer.send_signal(signal.SIGTERM)
    try:
        writer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        writer.kill()
    try:
        check, count = committed_prefix(target / "data" / "app.db")
    except (ValueError, sqlite3.Error) as exc:
        say(f"restored database: FAILED ({exc})")
        return False
    ok = (check == "ok" and verify["ok"] and load.error is None and before_inc <= count <= load.committed
          and all(c["succeeded"] for c in full["components"] + inc["components"]))
    say(f"restored database: PRAGMA integrity_check = {check}; {count} whole transactions, a prefix of the "
        f"{load.committed} committed (at least the {before_inc} committed before the incremental)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the daemon and mounts up afterwards")
    args = parser.parse_args()

    stop_previous()
    docs, data = DEMO / "docs", DEMO / "data"
    docs.mkdir(parents=True)
    data.mkdir()
    make_tree(docs)
    (data / "ledger.db").write_bytes(b"\0" * (4 << 20))

    say("== shadowfs demo ==")
    say(f"state {STATE}, mount root {MOUNT_ROOT}")
    daemon = start_daemon()
    try:
        cli("volume", "add", "docs", str(docs))
        cli("volume", "add", "data", str(data))
        wait_for(docs / "notes.md")
        say("protected in place: docs and data (applications keep their paths)")

        before = {"docs": manifest(str(docs)), "data": manifest(str(data))}
        t0 = time.perf_counter()
        first = cli("snapshot", "create", "docs", "data", "--json")
        took = (time.perf_counter() - t0) * 1000
        say(f"snapshot set 1: {first['set_id']} at {first['created']} ({took:.0f} ms including the CLI)")

        # life goes on: overwrite, append, delete, rename, chmod
        with open(docs / "big.bin", "r+b") as f:
            f.write(b"changed after the snapshot" * 1000)
        with open(docs / "notes.md", "a") as f:
            f.write("an edit after the snapshot\n")
        os.unlink(docs / "reports" / "2026" / "01.txt")
        os.rename(docs / "reports", docs / "archive")
        os.chmod(docs / "notes-hardlink.md", 0o600)
        with open(data / "ledger.db", "r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(1 << 20))
        second = cli("snapshot", "create", "docs", "data", "--json")
        say(f"snapshot set 2: {second['set_id']} after overwrites, a delete, a rename, a chmod")

        say("\nsnapshots:")
        for snap in cli("snapshot", "list", "--json"):
            say(f"  {snap['created']}  set {snap['set_id'][:8]}  {snap['volume']:5}  "
                f"{snap['diff_area_bytes']:>9} bytes in the diff area  {snap['path']}")
        browser = MOUNT_ROOT / "snapshots"
        say(f"\n{browser}: " + ", ".join(sorted(os.listdir(browser))))
        by_time = browser / "by-time"
        say(f"{by_time}: " + ", ".join(f"{name} -> {os.readlink(by_time / name)}"
                                       for name in sorted(os.listdir(by_time))))

        restore = DEMO / "restore"
        restore.mkdir()
        failures = 0
        for snap in first["snapshots"]:
            target = restore / snap["volume"]
            # --modify-window=-1: times compared to the nanosecond; by default rsync takes times
            # within the same second as equal and can leave a directory it just made (here the
            # copy's root, made within a second of the volume's last change) with its own time
            subprocess.run(["rsync", "-aHAX", "--modify-window=-1", "--specials", snap["path"] + "/",
                            f"{target}/"], check=True)
            diff = differences(manifest(str(target), with_ctime=False),
                               {k: v[:6] + (0,) + v[7:] for k, v in before[snap["volume"]].items()})
            # the copy's root directory gets a new ctime only; its mtime and content are compared
            failures += len(diff)
            detail = "".join(f"\n  {line}" for line in diff)
            say(f"rsync -aHAX of set 1 / {snap['volume']}: {len(before[snap['volume']])} objects, "
                f"{len(diff)} differences from the instant{detail}")
        live_diff = differences(before["docs"], manifest(str(docs)))
        say(f"the live docs tree meanwhile differs from set 1 in {len(live_diff)} places (as it should)")
        if failures:
            say("\nDEMO FAILED: the snapshot copy differs from the instant")
            return 1
        say("\nboth sets are browsable and set 1 copies out exactly as it was")
        if not backup_story(data):
            say("\nDEMO FAILED: the restored database did not pass its checks")
            return 1
        say("\ndemo ok: snapshot sets copy out exactly; the restored SQLite database passed "
            "PRAGMA integrity_check and holds a prefix of the committed rows")
        if args.keep:
            say(f"\n--keep: daemon pid {daemon.pid} stays up; browse {browser}; stop it and unprotect "
                f"the volumes with `SHADOWFS_STATE={STATE} SHADOWFS_MOUNT_ROOT={MOUNT_ROOT} "
                "python -m shadowfs stop --unprotect` "
                "(or run tools/demo again)")
            return 0
    finally:
        if not args.keep:
            subprocess.run(SHADOWFS + ["stop", "--unprotect"], env=ENV, capture_output=True, check=False)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
