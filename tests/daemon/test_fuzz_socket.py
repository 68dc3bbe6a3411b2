"""10,000 random or malformed frames at the daemon socket: it stays up, keeps serving, logs no crash.

Frames are drawn from a seeded generator: random bytes, broken length headers,
oversize lengths, truncated frames, bodies that are not UTF-8 or not JSON or
not objects, and JSON objects that look like requests (every operation the
daemon knows, with fields of every wrong type and size, odd ids). Framing
errors end their connection (the stream can no longer be trusted); a
well-framed but bad request gets an error reply on a connection that goes on.
Also: a process of another uid is refused, as a writer and as a requester.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from shadowfs.ipc import frames
from tests.support.daemon import DaemonRun

pytestmark = pytest.mark.fuse

FRAMES = 10_000
OPS = ["hello", "writer_register", "writers", "gather_writer_metadata", "prepare_for_backup",
       "snapshot_create", "backup_complete", "abort_backup", "backup_shutdown", "pre_restore", "post_restore",
       "gather_writer_status", "snapshot_properties", "volume_list", "volume_add", "volume_remove",
       "snapshot_list", "snapshot_delete", "snapshot_damage", "status", "writer_event", "no_such_op", ""]
FIELDS = ["protocol", "volumes", "context", "writers", "freeze_timeout", "event_timeout", "timeout", "bcd",
          "set_id", "snapshot_ids", "snapshot", "class_id", "instance_id", "instance_name", "writer_name",
          "usage_type", "session", "backup_type", "partial_file_support", "name", "backing", "force",
          "departed", "status", "event"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 2 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**30, 7])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1e308, 3.25, 1e-9])
    if kind == 4:
        return rng.choice(["", "1.0", "2.0", "x" * rng.randrange(5000), "backup", "a", "\u2603", "../etc"])
    if kind == 5:
        return "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c2" + str(rng.randrange(10))
    if kind == 6:
        return rng.choice(["<BACKUP_COMPONENTS/>", "<!DOCTYPE x [<!ENTITY a 'a'>]><x>&a;</x>", "<<<"])
    if kind == 7:
        return "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(30)))
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(FIELDS + ["a", "b"]): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_request(rng: random.Random) -> dict[str, Any]:
    obj: dict[str, Any] = {rng.choice(FIELDS): random_value(rng) for _ in range(rng.randrange(6))}
    if rng.random() < 0.9:
        obj["op"] = rng.choice(OPS) if rng.random() < 0.9 else random_value(rng)
    if rng.random() < 0.9:
        obj["id"] = rng.randrange(1, 1000) if rng.random() < 0.8 else random_value(rng)
    if obj.get("op") in ("volume_remove", "volume_add", "snapshot_delete"):
        obj["name"] = "fuzz-" + str(rng.randrange(1000))  # never a real volume
        obj["snapshot"] = "fuzz"
    return obj


def broken_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        return struct.pack(">I", frames.MAX_FRAME + 1 + rng.randrange(1 << 20))
    if kind == 2:
        return struct.pack(">I", 100) + b'{"op": "status"'  # truncated, then closed
    if kind == 3:
        body = b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(20))
        return struct.pack(">I", len(body)) + body
    if kind == 4:
        body = json.dumps(random_value(rng)).encode()[: rng.randrange(1, 50)]
        return struct.pack(">I", len(body)) + body
    if kind == 5:
        body = json.dumps([1, 2, {"op": "status"}]).encode()
        return struct.pack(">I", len(body)) + body
    return b"\x00\x00\x00"


def drain(sock: socket.socket) -> int:
    """Read whatever replies are there without waiting; return how many bytes."""
    total = 0
    sock.settimeout(0)
    try:
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, ConnectionResetError):
                return total
            if not data:
                return total
            total += len(data)
    finally:
        sock.settimeout(30)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def request(path: str, obj: dict[str, Any]) -> dict[str, Any]:
    with connect(path) as sock:
        frames.send_frame(sock, {**obj, "id": 1})
        reply, _ = frames.recv_frame(sock)
    return reply


def test_ten_thousand_random_and_malformed_frames(daemon: DaemonRun) -> None:
    daemon.add_volume("a")
    daemon.wait_ready()
    path = str(daemon.state / "daemon.sock")
    pid = daemon.cli("status", "--json")["pid"]
    rng = random.Random(20261121)
    session = connect(path)
    sent = replies = broken = 0
    try:
        for index in range(FRAMES):
            if rng.random() < 0.15:
                broken += 1
                with connect(path) as sock:
                    try:
                        sock.sendall(broken_frame(rng))
                        sock.shutdown(socket.SHUT_WR)
                        sock.recv(1 << 16)
                    except OSError:
                        pass
                continue
            obj = random_request(rng)
            try:
                data = json.dumps(obj).encode()
                session.sendall(struct.pack(">I", len(data)) + data)
            except OSError:  # the daemon dropped this connection: take another
                session.close()
                session = connect(path)
            sent += 1
            if index % 8 == 0:
                replies += drain(session)
    finally:
        session.close()
    assert sent + broken == FRAMES and replies > 0
    assert daemon.proc is not None and daemon.proc.poll() is None
    status = daemon.cli("status", "--json")
    assert status["pid"] == pid and status["volumes"][0]["process"]["state"] == "running"
    assert daemon.snapshot("a")["snapshots"][0]["volume"] == "a"
    assert request(path, {"op": "bogus"})["error"] == "unknown operation 'bogus'"
    with connect(path) as sock:
        frames.send_frame(sock, {"op": "snapshot_create", "volumes": "a", "id": [1]})
        reply, _ = frames.recv_frame(sock)
    assert reply["ok"] is False and reply["id"] is None
    assert "'id' must be an integer or a short string" in reply["error"]
    log = daemon.log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_a_connection_flooding_requests_is_cut_off_and_others_are_served(daemon: DaemonRun) -> None:
    path = str(daemon.state / "daemon.sock")
    with connect(path) as flood:
        frame = frames.encode_frame({"op": "status", "id": 1})
        for _ in range(2000):  # never reads a reply
            try:
                flood.sendall(frame)
            except OSError:
                break
        assert daemon.cli("status", "--json")["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    replies = [request(path, {"op": "status"}) for _ in range(3)]
    assert all(r["ok"] for r in replies)


def test_another_uid_is_refused_as_writer_and_as_requester(daemon: DaemonRun) -> None:
    sock_path = daemon.state / "daemon.sock"
    os.chmod(sock_path, 0o666)
    requests = [
        {"op": "writer_register", "protocol": "1.0", "class_id": "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c21",
         "instance_id": "6c1b7a43-2f5e-4c9a-b7d1-3e8f0a9d5c22", "writer_name": "intruder"},
        {"op": "gather_writer_metadata", "protocol": "1.0"},
        {"op": "snapshot_create", "volumes": ["a"], "context": "backup"},
        {"op": "hello", "protocol": "1.0"},
    ]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # become nobody; reach the 0700 test directory through an O_PATH descriptor
        try:
            os.close(read_end)
            state_fd = os.open(daemon.state, os.O_PATH)
            os.setgid(65534)
            os.setuid(65534)
            answers = []
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(f"/proc/self/fd/{state_fd}/{sock_path.name}")
                for number, obj in enumerate(requests, 1):
                    frames.send_frame(sock, {**obj, "id": number})
                    answers.append(frames.recv_frame(sock)[0])
            os.write(write_end, json.dumps(answers).encode())
        except BaseException as exc:  # noqa: B036 - report anything to the parent
            os.write(write_end, json.dumps({"child_error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answers = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert answers == [{"id": n, "ok": False, "error": "permission denied", "kind": "denied"}
                       for n in range(1, 5)]
    assert daemon.cli("writers", "--json") == []
    assert Path(sock_path).exists()
