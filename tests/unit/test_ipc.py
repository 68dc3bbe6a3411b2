"""ipc frames over real Unix socketpairs: encoding, descriptors, limits, malformed input, trio Channel."""

from __future__ import annotations

import array
import gc
import json
import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio

from shadowfs.ipc import frames
from shadowfs.ipc.channel import Channel


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(10)
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


def open_fds() -> set[int]:
    """This process's open descriptors; compare with `<=` (garbage collection may close some meanwhile)."""
    gc.collect()
    return {int(name) for name in os.listdir("/proc/self/fd")}


def pipe_with(data: bytes) -> int:
    """A pipe read end holding `data` (write end closed)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


def send_raw(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([data], anc)
    sock.sendall(data[sent:])


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# --- blocking API -------------------------------------------------------------------------------


def test_roundtrip_keeps_unicode_and_nesting(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    obj = {"op": "hold", "name": "vol-é☃", "nested": {"list": [1, 2.5, None, True]}, "id": 7}
    frames.send_frame(a, obj)
    got, fds = frames.recv_frame(b)
    assert got == obj and fds == []


def test_descriptors_travel_with_their_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    first, second = pipe_with(b"first"), pipe_with(b"second")
    try:
        frames.send_frame(a, {"n": 1})
        frames.send_frame(a, {"n": 2}, [first, second])
        frames.send_frame(a, {"n": 3})
    finally:
        os.close(first)
        os.close(second)
    assert frames.recv_frame(b) == ({"n": 1}, [])
    obj, fds = frames.recv_frame(b)
    assert obj == {"n": 2} and len(fds) == 2
    assert [os.read(fd, 100) for fd in fds] == [b"first", b"second"]
    frames.close_fds(fds)
    assert frames.recv_frame(b) == ({"n": 3}, [])


def test_large_frames_with_descriptors_are_not_mixed_up(pair: tuple[socket.socket, socket.socket]) -> None:
    """Frames bigger than the socket buffer arrive in many reads; fds stay with the right frame."""
    a, b = pair
    big = "x" * (900 * 1024)
    fd = pipe_with(b"payload")
    received: list[tuple[dict, list[int]]] = []

    def reader() -> None:
        for _ in range(3):
            received.append(frames.recv_frame(b))

    import threading

    thread = threading.Thread(target=reader)
    thread.start()
    frames.send_frame(a, {"big": big})
    frames.send_frame(a, {"big": big, "with": "fd"}, [fd])
    frames.send_frame(a, {"small": 1})
    os.close(fd)
    thread.join(20)
    assert [len(fds) for _, fds in received] == [0, 1, 0]
    assert received[1][0]["with"] == "fd" and len(received[1][0]["big"]) == len(big)
    assert os.read(received[1][1][0], 100) == b"payload"
    frames.close_fds(received[1][1])


def test_header_split_across_writes(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = raw_frame(b'{"a": 1}')
    fd = pipe_with(b"z")
    send_raw(a, data[:2], [fd])
    os.close(fd)
    a.sendall(data[2:5])
    a.sendall(data[5:])
    obj, fds = frames.recv_frame(b)
    assert obj == {"a": 1} and len(fds) == 1
    assert os.read(fds[0], 1) == b"z"
    frames.close_fds(fds)


def test_oversize_frame_is_refused_before_sending(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(frames.ProtocolError, match="exceeds the 1048576-byte limit"):
        frames.send_frame(a, {"data": "x" * frames.MAX_FRAME})
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent


def test_oversize_incoming_header_is_a_protocol_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = pipe_with(b"")
    before = open_fds()
    send_raw(a, struct.pack(">I", frames.MAX_FRAME + 1), [fd])
    with pytest.raises(frames.ProtocolError, match="exceeds"):
        frames.recv_frame(b)
    assert open_fds() <= before  # the received duplicate was closed
    os.close(fd)


def test_frame_of_exactly_max_size_is_accepted(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    overhead = len(json.dumps({"d": ""}, separators=(",", ":")))
    obj = {"d": "y" * (frames.MAX_FRAME - overhead)}
    assert len(frames.encode_frame(obj)) == frames.MAX_FRAME + 4
    import threading

    thread = threading.Thread(target=frames.send_frame, args=(a, obj))
    thread.start()
    assert frames.recv_frame(b)[0] == obj
    thread.join(10)


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe{}", "not valid UTF-8 JSON"),
    (b"[1, 2]", "not an object"),
    (b'"text"', "not an object"),
    (b"", "not valid UTF-8 JSON"),
])
def test_malformed_bodies(pair: tuple[socket.socket, socket.socket], body: bytes, message: str) -> None:
    a, b = pair
    fd = pipe_with(b"")
    before = open_fds()
    send_raw(a, raw_frame(body), [fd])
    with pytest.raises(frames.ProtocolError, match=message):
        frames.recv_frame(b)
    assert open_fds() <= before
    os.close(fd)


def test_eof_at_boundary_and_mid_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(raw_frame(b'{"ok": true}') + raw_frame(b'{"cut": 1}')[:6])
    a.shutdown(socket.SHUT_WR)
    assert frames.recv_frame(b)[0] == {"ok": True}
    with pytest.raises(frames.ProtocolError, match="middle of a frame"):
        frames.recv_frame(b)
    c, d = socket.socketpair()
    c.close()
    with pytest.raises(frames.ChannelClosed):
        frames.recv_frame(d)
    d.close()


def test_encode_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(frames.ProtocolError):
        frames.encode_frame(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(frames.ProtocolError):
        frames.encode_frame({"x": object()})
    with pytest.raises(frames.ProtocolError):
        frames.encode_frame({"x": float("nan")})


def test_peer_credentials(pair: tuple[socket.socket, socket.socket]) -> None:
    pid, uid, gid = frames.peer_credentials(pair[0])
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


# --- trio Channel -------------------------------------------------------------------------------


def channel_pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel.from_socket(a), Channel.from_socket(b)


async def test_call_reply_events_and_errors() -> None:
    client, server = channel_pair()
    gate = trio.Event()

    async def handle(request: frames.Frame, fds: list[int]) -> frames.Frame | tuple[frames.Frame, list[int]]:
        op = request["op"]
        if op == "echo":
            return {"echo": request["value"]}
        if op == "slow":
            await gate.wait()
            return {"slow": True}
        if op == "fast":
            gate.set()
            await server.send({"event": "tick", "n": 1})
            return {"fast": True}
        if op == "fd":
            data = os.read(fds[0], 100)
            frames.close_fds(fds)
            reply_fd = pipe_with(data.upper())
            return {"read": data.decode()}, [reply_fd]
        if op == "fail":
            raise frames.RequestError("volume 'x' is\nnot known")
        raise ValueError("boom")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run, None, handle)
        await nursery.start(client.run)
        assert await client.call({"op": "echo", "value": [1, "a"]}) == {"id": 1, "ok": True, "echo": [1, "a"]}

        results: dict[str, frames.Frame] = {}

        async def call(op: str) -> None:
            results[op] = await client.call({"op": op})

        async with trio.open_nursery() as calls:  # replies come back out of order
            calls.start_soon(call, "slow")
            await trio.sleep(0.05)
            calls.start_soon(call, "fast")
        assert results["slow"]["slow"] and results["fast"]["fast"]
        event, event_fds = await client.events.receive()
        assert event == {"event": "tick", "n": 1} and event_fds == []

        sent = pipe_with(b"abc")
        reply, fds = await client.call_fds({"op": "fd"}, [sent])
        os.close(sent)
        assert reply["read"] == "abc" and os.read(fds[0], 10) == b"ABC"
        frames.close_fds(fds)

        with pytest.raises(frames.RemoteError, match="^volume 'x' is not known$"):
            await client.call({"op": "fail"})
        with pytest.raises(frames.RemoteError, match="ValueError: boom"):
            await client.call({"op": "other"})
        client.close()
    server.close()


async def test_call_timeout_and_peer_close() -> None:
    client, server = channel_pair()
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with pytest.raises(frames.CallTimeout, match="no reply to 'hold' within 0.2 s"):
            await client.call({"op": "hold"}, timeout=0.2)
        request, _ = await server.receive()
        assert request["op"] == "hold" and request["id"] == 1

        async def close_soon() -> None:
            await trio.sleep(0.1)
            server.close()

        nursery.start_soon(close_soon)
        with pytest.raises(frames.ChannelClosed):
            await client.call({"op": "commit"}, timeout=5)
    # run has ended with the peer: a later call is told the same, not that run is missing
    with pytest.raises(frames.ChannelClosed, match="peer closed"):
        await client.call({"op": "release"})
    client.close()


async def test_call_needs_run() -> None:
    client, server = channel_pair()
    with pytest.raises(RuntimeError, match="Channel.run"):
        await client.call({"op": "x"})
    client.close()
    server.close()


async def test_malformed_frame_ends_run_with_protocol_error_not_a_crash() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = Channel.from_socket(b)
    fd = pipe_with(b"")
    before = open_fds()
    send_raw(a, raw_frame(b"[]"), [fd])
    with pytest.raises(frames.ProtocolError):
        await server.run()
    assert open_fds() <= before
    os.close(fd)
    a.close()
    server.close()


async def test_request_without_handler_gets_an_error_reply() -> None:
    client, server = channel_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await nursery.start(client.run)
        with pytest.raises(frames.RemoteError, match="unexpected request 'x'"):
            await client.call({"op": "x"})
        client.close()
    server.close()
