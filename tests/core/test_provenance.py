"""Who made each captured change (design §3.14), on a real LMDB diff area changed through the production
capture code: an author record for the first change of each attribute and entry object after a snapshot,
stored with its pre-image and deleted with it, nothing read or stored for a change that needs no capture,
the diff and blame views of the records, and an area of format 3 read as it is and upgraded.

The callers are what a FUSE request carries (uid, gid, pid); the pids are real processes, so their
command names are read from /proc as the mount process reads them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import pytest

from shadowfs.capture.provenance import CommandNames
from shadowfs.diffarea import provenance, schema
from shadowfs.diffarea.area import DiffArea
from shadowfs.diffarea.schema import BLOCK_SIZE, AttrRecord, AuthorRecord, BackingIno, Seq
from shadowfs.snapshot import blame
from shadowfs.snapshot import changes as ch
from shadowfs.snapshot.diff import diff_snapshots
from shadowfs.snapshot.readers import ViewReader
from tests.support.coresim import CoreSim


@dataclass(frozen=True)
class Caller:
    """What a FUSE request says of its caller (pyfuse3.RequestContext)."""

    uid: int
    gid: int
    pid: int


def started(*command: str) -> subprocess.Popen[bytes]:
    """A program running `command`, once its process has its command name (Popen may return between
    the fork, or vfork, and the exec that names it)."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE)
    name = os.path.basename(command[0]).encode()
    for _ in range(1000):
        with open(f"/proc/{proc.pid}/comm", "rb") as comm:
            if comm.read().rstrip(b"\n") == name:
                return proc
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{command[0]} did not start")


@pytest.fixture
def programs() -> Iterator[dict[str, int]]:
    """Two running programs, by command name: their pids."""
    procs = {"sleep": started("sleep", "600"), "tail": started("tail", "-f", "/dev/null")}
    try:
        yield {name: proc.pid for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _authors(area: DiffArea) -> dict[tuple[bytes, Seq], AuthorRecord]:
    """Every author record, by (object key, sequence)."""
    assert area.authors is not None
    with area.read() as txn:
        return {schema.split_preimage_key(key): schema.decode_author(value)
                for key, value in txn.cursor(db=area.authors)}


def _preimage_keys(area: DiffArea) -> set[tuple[bytes, Seq]]:
    with area.read() as txn:
        return {schema.split_preimage_key(key) for key, _ in txn.cursor(db=area.preimages)}


def _by(record: AuthorRecord | None) -> tuple[int, int, int, bytes, str]:
    assert record is not None
    return record.uid, record.gid, record.pid, record.comm, record.op


def test_the_first_change_of_each_object_records_who_made_it(sim: CoreSim, programs: dict[str, int]) -> None:
    sim.create("f", b"a" * (3 * BLOCK_SIZE))
    sim.create("g", b"g")
    sim.create("h", b"h")
    sim.mkdir("d")
    sim.create("d/e", b"e")
    s1 = Seq(sim.snapshot("s1"))
    alice = Caller(1001, 2001, programs["sleep"])
    bob = Caller(1002, 2002, programs["tail"])
    inos = {rel: BackingIno(sim._ino(rel)) for rel in ("", "f", "g", "h", "d", "d/e")}
    sim.caller = bob
    sim.unlink("h")  # the first change in the root directory
    sim.caller = alice
    sim.write("f", 0, b"x" * 10)
    sim.caller = bob
    sim.write("f", 2 * BLOCK_SIZE, b"y")  # a later change of f: its author is not recorded
    sim.attr_change("g", lambda path: os.chmod(path, 0o600))
    sim.caller = alice
    sim.create("d/new", b"n")
    sim.rename("d/e", "e2")
    sim.caller = None
    sim.attr_change("d/new", lambda path: os.chmod(path, 0o600))  # born since s1: nothing captured

    def author(obj: bytes) -> AuthorRecord | None:
        with sim.area.read() as txn:
            return provenance.author_at(sim.area, txn, obj, s1)

    by_alice = lambda op: (1001, 2001, programs["sleep"], b"sleep", op)  # noqa: E731
    by_bob = lambda op: (1002, 2002, programs["tail"], b"tail", op)  # noqa: E731
    assert _by(author(schema.attr_object(inos["f"]))) == by_alice("write")
    assert _by(author(schema.attr_object(inos["g"]))) == by_bob("setattr")
    assert _by(author(schema.dirent_object(inos[""], b"h"))) == by_bob("unlink")
    assert _by(author(schema.attr_object(inos["h"]))) == by_bob("unlink")
    assert _by(author(schema.attr_object(inos[""]))) == by_bob("unlink")
    assert _by(author(schema.dirent_object(inos["d"], b"new"))) == by_alice("create")
    assert _by(author(schema.attr_object(inos["d"]))) == by_alice("create")
    for obj in (schema.dirent_object(inos["d"], b"e"), schema.dirent_object(inos[""], b"e2"),
                schema.attr_object(inos["d/e"])):
        assert _by(author(obj)) == by_alice("rename")
    # exactly one author for each attribute and entry pre-image, none for blocks or births
    recorded = _authors(sim.area)
    captured = {key for key in _preimage_keys(sim.area) if key[0][:1] != b"B"}
    born = {(schema.attr_object(BackingIno(sim._ino("d/new"))), s1)}
    assert set(recorded) == captured - born
    assert all(0 < record.time_ns <= time.time_ns() for record in recorded.values())

    # the diff names them, item by item
    s2 = Seq(sim.snapshot("s2"))
    found = ch.scan(sim.area, s1, s2, authors=True)
    view_a, view_b = sim.view(s1), sim.view(s2)
    listing = diff_snapshots(found, ViewReader(view_a), ViewReader(view_b), view_a.root_ino)
    items = {(i["path"], i["change"]): i for i in listing}
    who = {key: (i["who"]["uid"], i["who"].get("comm"), i["who"]["op"]) for key, i in items.items()
           if "who" in i}
    assert who == {("", "modified"): (1002, "tail", "unlink"), ("d", "modified"): (1001, "sleep", "create"),
                   ("d/new", "created"): (1001, "sleep", "create"),
                   ("e2", "renamed"): (1001, "sleep", "rename"),
                   ("f", "modified"): (1001, "sleep", "write"), ("g", "modified"): (1002, "tail", "setattr"),
                   ("h", "deleted"): (1002, "tail", "unlink")}
    assert items[("e2", "renamed")]["from"] == "d/e"
    assert ch.scan(sim.area, s1, s2).authors == {}  # a backup's scan reads none

    # blame of f: one change after s1, with its data, by alice
    subjects = blame.Subjects(inos={inos["f"]: "f"}, entries={(inos[""], b"f"): "f"})
    listed = blame.changes(sim.area, subjects)
    assert [(c["object"], c["since"], c["until"], c.get("data"), c["who"]["pid"]) for c in listed] == [
        ("attributes", "s1", "s2", True, programs["sleep"])]
    assert blame.changes(sim.area, subjects, since=s2) == []


def test_a_name_removed_and_made_again_after_a_later_snapshot_names_both(sim: CoreSim,
                                                                        programs: dict[str, int]) -> None:
    """Across a snapshot in between, a diff's deleted path names who removed it, and the created
    path of the same name who made it again."""
    sim.create("f", b"old")
    s1 = Seq(sim.snapshot("s1"))
    sim.caller = Caller(1001, 2001, programs["sleep"])
    sim.unlink("f")
    sim.snapshot("s2")
    sim.caller = Caller(1002, 2002, programs["tail"])
    sim.create("f", b"new")
    s3 = Seq(sim.snapshot("s3"))
    view_a, view_b = sim.view(s1), sim.view(s3)
    listing = diff_snapshots(ch.scan(sim.area, s1, s3, authors=True), ViewReader(view_a), ViewReader(view_b),
                             view_a.root_ino)
    assert {(i["path"], i["change"]): (i["who"]["comm"], i["who"]["op"]) for i in listing if i["path"]} == {
        ("f", "deleted"): ("sleep", "unlink"), ("f", "created"): ("tail", "create")}


def test_a_change_that_needs_no_capture_reads_and_stores_nothing(sim: CoreSim,
                                                                 programs: dict[str, int]) -> None:
    sim.create("f", b"a" * (2 * BLOCK_SIZE))
    sim.mkdir("old")
    seq = Seq(sim.snapshot("s1"))
    names = sim.engine.names
    sim.caller = alice = Caller(1001, 2001, programs["sleep"])
    sim.write("f", 0, b"x")  # the first change of f: its attributes and block 0
    assert names.reads == 1 and len(_authors(sim.area)) == 1
    fd = os.open(os.path.join(sim.backing, "f"), os.O_WRONLY)
    try:
        assert sim.planner.write(seq, BackingIno(os.fstat(fd).st_ino), fd, 0, 10, caller=alice) is None
    finally:
        os.close(fd)
    sim.write("f", 5, b"y")  # the same block again: no capture
    sim.write("f", 2 * BLOCK_SIZE, b"appended")  # past its size at s1: no capture
    sim.write("f", BLOCK_SIZE, b"z")  # a block captured, its attributes were already: no author
    assert names.reads == 1 and len(_authors(sim.area)) == 1
    sim.mkdir("new")  # an entry of the root: captured, with its author
    assert names.reads == 2
    sim.create("new/x", b"x")  # in a directory born since s1: nothing captured, nothing read
    sim.write("new/x", 0, b"more")
    sim.attr_change("new/x", lambda path: os.chmod(path, 0o600))
    sim.rename("new/x", "new/y")
    sim.unlink("new/y")
    assert names.reads == 2 and len(_authors(sim.area)) == 3  # f, the root and its entry "new"


def test_authors_are_deleted_with_their_pre_images(sim: CoreSim, programs: dict[str, int]) -> None:
    sim.create("f", b"f")
    sim.create("g", b"g")
    alice = Caller(1001, 2001, programs["sleep"])
    bob = Caller(1002, 2002, programs["tail"])
    f, g = (schema.attr_object(BackingIno(sim._ino(rel))) for rel in ("f", "g"))
    s1 = Seq(sim.snapshot("s1"))
    sim.caller = alice
    sim.write("f", 0, b"1")
    s2 = Seq(sim.snapshot("s2"))
    sim.caller = bob
    sim.write("f", 0, b"2")
    sim.attr_change("g", lambda path: os.chmod(path, 0o600))
    s3 = Seq(sim.snapshot("s3"))
    assert {key: record.comm for key, record in _authors(sim.area).items()} == {
        (f, s1): b"sleep", (f, s2): b"tail", (g, s2): b"tail"}
    sim.delete(s2)  # f's change after s2 goes (s1 sees f's older pre-image); g's now stands for s1..s3
    assert {key: record.comm for key, record in _authors(sim.area).items()} == {
        (f, s1): b"sleep", (g, s2): b"tail"}
    subjects = blame.Subjects(inos={BackingIno(sim._ino("g")): "g"})
    assert [(c["since"], c["until"], c["who"]["op"]) for c in blame.changes(sim.area, subjects)] == [
        ("s1", "s3", "setattr")]
    sim.delete(s1)  # the oldest: everything captured before s3 goes, authors too
    assert _authors(sim.area) == {}
    sim.delete(s3)
    assert sim.area.used_bytes() == 0  # the authors' bytes were counted, and given back


def test_blame_lists_a_change_made_outside_the_mount_without_an_author(sim: CoreSim) -> None:
    sim.create("g", b"g")
    s1 = sim.snapshot("s1")
    ino = BackingIno(sim._ino("g"))
    assert sim.committer.run(lambda txn: sim.area.mark_damaged(txn, ino, "g", "written while unprotected",
                                                               "2026-11-22T08:00:00Z"))
    listed = blame.changes(sim.area, blame.Subjects(inos={ino: "g"}))
    assert listed == [{"path": "g", "object": "damage", "ino": ino, "cause": "written while unprotected",
                       "found": "2026-11-22T08:00:00Z", "seq": s1, "since": "s1", "until": "live"}]


def test_command_names_are_read_when_asked_and_remembered_for_exited_processes() -> None:
    names = CommandNames(limit=2)
    first = started("sleep", "600")
    second = started("tail", "-f", "/dev/null")
    try:
        assert names.name(first.pid) == b"sleep" and names.name(second.pid) == b"tail"
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
    assert names.name(first.pid) == b"sleep"  # gone: the last name read
    third = started("cat")
    try:
        assert names.name(third.pid) == b"cat"  # a third one remembered: the first is forgotten
    finally:
        third.kill()
        third.wait()
    assert [names.name(proc.pid) for proc in (first, second, third)] == [b"", b"tail", b"cat"]
    assert names.reads == 7


def test_author_records_round_trip() -> None:
    record = AuthorRecord(uid=4294967294, gid=0, pid=4194304, time_ns=1_800_000_000_123_456_789,
                          comm=b"na\xffme", op="rename")
    assert schema.decode_author(schema.encode_author(record)) == record
    fields = provenance.author_fields(record)
    assert fields == {"uid": 4294967294, "gid": 0, "pid": 4194304, "op": "rename", "comm": "na\\xffme",
                      "time": "2027-01-15T08:00:00.123457Z"}
    assert "comm" not in provenance.author_fields(AuthorRecord(1, 1, 1, 0, b"", "write"))


# ---- an area of the previous format -----------------------------------------------------------------


def _as_format_3(path: str) -> None:
    """Make a diff area of this format one of format 3, as format 3's code made them: no ``authors``."""
    env = lmdb.open(path, max_dbs=16, subdir=True)
    try:
        with env.begin(write=True) as txn:
            txn.put(schema.META_FORMAT, schema.u32(3), db=env.open_db(schema.DB_META, txn=txn))
            txn.drop(env.open_db(schema.DB_AUTHORS, txn=txn), delete=True)
    finally:
        env.close()


def test_an_area_of_format_3_is_read_as_it_is_and_upgraded_when_opened_writable(tmp_path: Path) -> None:
    path = str(tmp_path / "area")
    ino = BackingIno(4242)
    area = DiffArea.open(path, volume="v")
    with area.write() as txn:
        s1 = area.record_snapshot(txn, "s1", "set1", "2026-01-01T00:00:00Z").seq
        area.put_preimage(txn, schema.attr_object(ino), s1, schema.encode_attr(AttrRecord(mode=0o100644)))
    area.close()
    _as_format_3(path)
    reader = DiffArea.open(path, readonly=True)  # readers need not wait for the mount process
    try:
        assert reader.authors is None
        assert ch.scan(reader, s1, None, authors=True).authors == {}
        listed = blame.changes(reader, blame.Subjects(inos={ino: "x"}))
        assert [(c["object"], c["since"], c["until"]) for c in listed] == [("attributes", "s1", "live")]
        assert "who" not in listed[0]
    finally:
        reader.close()
    upgraded = DiffArea.open(path)
    try:
        assert upgraded.authors is not None
        with upgraded.read() as txn:
            assert schema.read_u32(txn.get(schema.META_FORMAT, db=upgraded.meta)) == schema.FORMAT_VERSION
            assert txn.stat(upgraded.authors)["entries"] == 0
            assert [r.seq for r in upgraded.snapshot_list(txn)] == [s1]
    finally:
        upgraded.close()
