"""The README's tour of the CLI, run top to bottom as one shell script, as a user would type it.

The block is taken from README.md as it stands; its absolute paths (/var/lib/shadowfs, /srv,
/backup, /mnt) are moved under the test's directory, and each ``<...>`` where the README asks for
an id from earlier output becomes a look-up of that id at that moment (the first set, the second
one, the first and last snapshot of ``home``, the newest image). Every command must succeed
(``set -e``); the rsync copy, the restic snapshot and the restored database are then looked at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shadowfs.manifest import differences, manifest
from tests.support.daemon import DaemonRun

README = Path(__file__).resolve().parents[2] / "README.md"

# what the README's placeholders stand for, as shell look-ups run when the line runs
LOOKUPS = r'''
_rows() { shadowfs snapshot list --json; }
_pick() { _rows | "$TOUR_PYTHON" -c '
import json, sys
rows = sorted((r for r in json.load(sys.stdin) if r["volume"] == "home"), key=lambda r: r["seq"])
sets = [r["set_id"] for r in rows]  # created has whole seconds: order by sequence
home = [r["id"] for r in rows]
picks = {"first_set": sets[0], "second_set": sets[1], "first_home": home[0], "last_home": home[-1]}
print(picks[sys.argv[1]])
' "$1"; }
_image() { shadowfs media list --media "$TOUR_BACKUP" --json | "$TOUR_PYTHON" -c '
import json, sys
print(sorted(json.load(sys.stdin), key=lambda i: i["created"])[-1]["id"])'; }
'''
PLACEHOLDERS = {"<set id or snapshot id>": "$(_pick second_set)", "<set id>": "$(_pick first_set)",
                "<image id>": "$(_image)"}


def tour_block() -> str:
    text = README.read_text()
    start = text.index("## A tour of the CLI")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "README: no sh block in the tour"
    return block.group(1)


def localized(block: str, base: Path) -> str:
    """The tour with its paths under `base` and its placeholders as look-ups."""
    paths = {"/var/lib/shadowfs": base / "state", "/srv/": f"{base}/srv/", "/backup": base / "backup",
             "/mnt/": f"{base}/mnt/"}
    # only where a path starts: /var/lib/shadowfs/mnt/... is one path, not two
    moved = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(old) for old in paths) + ")")
    lines = []
    for line in block.splitlines():
        line = moved.sub(lambda found: str(paths[found.group(0)]), line)
        if line.count("<snapshot id>") == 2:  # diff A B: the first and the last snapshot of home
            line = line.replace("<snapshot id>", "$(_pick first_home)", 1)
            line = line.replace("<snapshot id>", "$(_pick last_home)", 1)
        line = line.replace("<snapshot id>", "$(_pick first_home)")
        for placeholder, lookup in PLACEHOLDERS.items():
            line = line.replace(placeholder, lookup)
        lines.append(line)
    script = "\n".join(lines)
    code = re.sub(r"#.*", "", script)  # comments may say anything; the commands may not leave base
    for path in re.findall(r"(?<![\w.$)])/[\w./-]*", code):
        assert path.startswith(str(base)), f"README tour: path {path} would not be moved under the test"
    unknown = code[code.index("<"):][:40] if "<" in code else ""
    assert not unknown, f"README tour: a placeholder the test does not know: {unknown}"
    return script


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (tools/test installs it)")
def test_readme_tour_runs_top_to_bottom(tmp_path: Path) -> None:
    run = DaemonRun(tmp_path)
    run.mount_root = run.state / "mnt"  # the tour's daemon uses the default mount root
    home = tmp_path / "srv" / "home"
    (home / "docs").mkdir(parents=True)
    for n in range(20):
        (home / "docs" / f"note{n}.txt").write_bytes(f"note {n}\n".encode() * (n + 1))
    os.symlink("docs/note1.txt", home / "latest")
    os.link(home / "docs" / "note0.txt", home / "note0-again")
    before = manifest(str(home), with_ctime=False)
    (tmp_path / "srv" / "db").mkdir()
    db = sqlite3.connect(tmp_path / "srv" / "db" / "app.db")  # the database the writer serves
    with db:
        db.execute("create table notes (id integer primary key, body text)")
        db.executemany("insert into notes (body) values (?)", [(f"note {n}",) for n in range(100)])
    db.close()  # an open file in it would make `volume add` refuse the directory
    script = "set -euo pipefail -x\n" + LOOKUPS + localized(tour_block(), tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SHADOWFS_", "RESTIC_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
                "SHADOWFS_STATE": str(run.state), "TOUR_PYTHON": sys.executable,
                "TOUR_BACKUP": str(tmp_path / "backup" / "media")})
    log = tmp_path / "tour.log"
    with open(log, "wb") as out:
        shell = subprocess.Popen(["bash", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=tmp_path)
    try:
        status = shell.wait(timeout=600)
        assert status == 0, f"the tour stopped with exit {status}:\n{log.read_text(errors='replace')[-4000:]}"
    finally:
        if shell.poll() is None:
            shell.kill()
        run.cli("stop", "--unprotect", check=False)
        try:
            os.killpg(shell.pid, signal.SIGTERM)  # what the tour left in the background (the writer)
        except ProcessLookupError:
            pass
        run.cleanup()
    # what the commands made is what they say they made
    # the rsync copy of the first set, and home after the tour's whole-volume revert to that set's
    # snapshot, hold what home held then: the files made before the tour and the first draft
    copied = manifest(str(tmp_path / "backup" / "home"), with_ctime=False)
    # (home's root: its link count also counts the hidden .shadowfs/, seen once the mount is gone)
    reverted = {rel: entry for rel, entry in manifest(str(home), with_ctime=False).items()
                if rel != "." and not rel.startswith("./.shadowfs")}
    assert differences({rel: entry for rel, entry in copied.items() if rel != "."}, reverted) == []
    made_by_tour = (".", "./report.txt")
    assert differences({rel: entry for rel, entry in before.items() if rel != "."},
                       {rel: entry for rel, entry in copied.items() if rel not in made_by_tour}) == []
    assert (home / "report.txt").read_text() == "first draft\n"
    restored = tmp_path / "srv" / "restore"
    databases = list(restored.rglob("app.db"))
    assert databases, f"no app.db restored under {restored}"
    db = sqlite3.connect(databases[0])
    try:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        assert db.execute("select count(*) from notes").fetchone() == (100,)
    finally:
        db.close()
    snapshots = subprocess.run(["restic", "-r", str(tmp_path / "backup" / "restic"), "snapshots", "--json"],
                               env={**env, "RESTIC_PASSWORD": "change-me"}, capture_output=True, text=True,
                               check=True)
    assert '"paths"' in snapshots.stdout
