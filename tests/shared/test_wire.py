"""Exact bytes against every server kind: the specification's examples in both framings,
and the limits at their edge (at the limit: works; one over: the documented error, and
the server goes on)."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import error_code, message, new_server, raw_connect, serving, wait_for

pytestmark = pytest.mark.timeout(30)

FRAMINGS = ["ndjson", "content-length"]


def spec_server(kind: str, framing: str) -> tuple[Any, list[Any]]:
    server = new_server(kind, framing)
    seen: list[Any] = []

    @server.hook_request("subtract")
    def subtract(minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    server.hook_request("sum", lambda *xs: sum(xs))
    server.hook_request("get_data", lambda: ["hello", 5])
    server.hook_notif("update", lambda *xs: seen.append(("update", xs)))
    server.hook_notif("notify_hello", lambda x: seen.append(("notify_hello", x)))
    server.hook_notif("notify_sum", lambda *xs: seen.append(("notify_sum", xs)))
    return server, seen


# The specification's examples (section 7) answered, as (sent, answer); error objects are
# compared by code (the messages are ours to word), batch replies in any order.
ANSWERED = [
    ('{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}', {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc":"2.0","method":"subtract","params":[23,42],"id":2}', {"jsonrpc": "2.0", "result": -19, "id": 2}),
    (
        '{"jsonrpc":"2.0","method":"subtract","params":{"subtrahend":23,"minuend":42},"id":3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
    ),
    (
        '{"jsonrpc":"2.0","method":"subtract","params":{"minuend":42,"subtrahend":23},"id":4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
    ),
    ('{"jsonrpc":"2.0","method":"foobar","id":"1"}', {"jsonrpc": "2.0", "error": -32601, "id": "1"}),
    ('{"jsonrpc":"2.0","method":"foobar, "params":"bar","baz]', {"jsonrpc": "2.0", "error": -32700, "id": None}),
    ('{"jsonrpc":"2.0","method":1,"params":"bar"}', {"jsonrpc": "2.0", "error": -32600, "id": None}),
    (
        '[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},{"jsonrpc":"2.0","method"]',
        {"jsonrpc": "2.0", "error": -32700, "id": None},
    ),
    ("[]", {"jsonrpc": "2.0", "error": -32600, "id": None}),
    ("[1]", [{"jsonrpc": "2.0", "error": -32600, "id": None}]),
    ("[1,2,3]", [{"jsonrpc": "2.0", "error": -32600, "id": None}] * 3),
    (
        '[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},'
        '{"jsonrpc":"2.0","method":"notify_hello","params":[7]},'
        '{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":"2"},'
        '{"foo":"boo"},'
        '{"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},'
        '{"jsonrpc":"2.0","method":"get_data","id":"9"}]',
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": -32600, "id": None},
            {"jsonrpc": "2.0", "error": -32601, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
    ),
]
# The examples that must get no answer at all (notifications, a batch of them).
SILENT = [
    '{"jsonrpc":"2.0","method":"update","params":[1,2,3,4,5]}',
    '{"jsonrpc":"2.0","method":"foobar"}',
    '[{"jsonrpc":"2.0","method":"notify_sum","params":[1,2,4]},{"jsonrpc":"2.0","method":"notify_hello","params":[7]}]',
]


def normalize(answer: Any) -> Any:
    if isinstance(answer, list):
        return sorted((normalize(a) for a in answer), key=lambda a: json.dumps(a, sort_keys=True))
    assert set(answer) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), answer
    out = dict(answer)
    if isinstance(out.get("error"), dict):
        assert isinstance(out["error"]["code"], int) and isinstance(out["error"]["message"], str)
        assert "data" not in out["error"], "no detail goes to the peer"
        out["error"] = out["error"]["code"]
    return out


@pytest.mark.parametrize("framing", FRAMINGS)
def test_spec_examples_on_the_wire(server_kind: str, framing: str) -> None:
    server, seen = spec_server(server_kind, framing)
    with serving(server_kind, server) as served, raw_connect(served.address, framing) as peer:
        for text, expected in ANSWERED:
            peer.send(text)
            assert normalize(peer.receive()) == normalize(expected), text
        for text in SILENT:
            peer.send(text)
        # The next answer on the wire belongs to this request: nothing came before it.
        peer.send('{"jsonrpc":"2.0","method":"subtract","params":[5,3],"id":"after"}')
        assert peer.receive() == {"jsonrpc": "2.0", "result": 2, "id": "after"}
        peer.send('{"jsonrpc":"2.0","method":"rpc.discover","id":7}')  # reserved by the spec
        assert normalize(peer.receive()) == {"jsonrpc": "2.0", "error": -32601, "id": 7}
        assert peer.nothing_within(0.05)
    assert seen == [("notify_hello", 7), ("update", (1, 2, 3, 4, 5)), ("notify_sum", (1, 2, 4)),
                    ("notify_hello", 7)]


def test_auto_framing_answers_each_connection_in_kind(server_kind: str) -> None:
    server, _ = spec_server(server_kind, "auto")
    with serving(server_kind, server) as served:
        for framing in FRAMINGS:
            with raw_connect(served.address, framing) as peer:
                peer.send('{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}')
                assert peer.receive() == {"jsonrpc": "2.0", "result": 19, "id": 1}


def test_unusual_but_legal_ids_are_echoed_exactly(server_kind: str) -> None:
    server, _ = spec_server(server_kind, "ndjson")
    with serving(server_kind, server) as served, raw_connect(served.address, "ndjson") as peer:
        for id in (None, 1.5, 0, "", -7, "x" * 100):
            peer.send(json.dumps({"jsonrpc": "2.0", "method": "subtract", "params": [1, 1], "id": id}))
            assert peer.receive() == {"jsonrpc": "2.0", "result": 0, "id": id}


# ---- limits at their edge --------------------------------------------------------------

EMPTY = len(json.dumps({"jsonrpc": "2.0", "method": "echo", "params": [""], "id": 1}))


def sized(size: int) -> str:
    """An echo request whose JSON text is exactly ``size`` bytes."""
    text = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": ["x" * (size - EMPTY)], "id": 1})
    assert len(text) == size
    return text


@pytest.mark.parametrize("framing", FRAMINGS)
def test_max_message_size(server_kind: str, framing: str) -> None:
    server = new_server(server_kind, framing, max_message_size=200)
    server.hook_request("echo", lambda s: s)
    with serving(server_kind, server) as served, raw_connect(served.address, framing) as peer:
        peer.send(sized(200))  # at the limit
        assert peer.receive() == {"jsonrpc": "2.0", "id": 1, "result": "x" * (200 - EMPTY)}
        peer.send(sized(201))  # one over: -32007, id null
        answer = peer.receive()
        assert answer["id"] is None and error_code(answer) == -32007
        assert "200" in answer["error"]["message"]
        peer.send(sized(150))  # the connection goes on
        assert peer.receive()["result"] == "x" * (150 - EMPTY)
        remote = served.one_remote()
        wait_for(lambda: served.stats(remote)["errors"] == 1)


def test_max_batch_size(server_kind: str) -> None:
    server = new_server(server_kind, "ndjson", max_batch_size=3)
    server.hook_request("id", lambda x: x)
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        batch = [message("id", [i], i) for i in range(4)]
        peer.send(batch[:3])  # at the limit
        assert sorted(a["result"] for a in peer.receive()) == [0, 1, 2]
        peer.send(batch)  # one over: one error for the whole batch
        answer = peer.receive()
        assert answer["id"] is None and error_code(answer) == -32010
        peer.send(batch[0])
        assert peer.receive() == {"jsonrpc": "2.0", "id": 0, "result": 0}


def test_max_connections(server_kind: str) -> None:
    server = new_server(server_kind, max_connections=2)
    server.hook_request("ping", lambda: "pong")
    with serving(server_kind, server) as served:
        with raw_connect(served.address) as one, raw_connect(served.address) as two:
            for peer in (one, two):  # at the limit
                peer.send(message("ping", id=1))
                assert peer.receive()["result"] == "pong"
            with raw_connect(served.address) as third:  # one over: -32009, then closed
                assert third.receive() == {"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32009, "message": "Too many connections"}}
                assert third.receive_eof() == b""
            one.send(message("ping", id=2))  # the others are unaffected
            assert one.receive()["result"] == "pong"
        wait_for(lambda: not served.remotes())
        with raw_connect(served.address) as again:  # slots came free
            again.send(message("ping", id=1))
            assert again.receive()["result"] == "pong"


def test_idle_timeout(server_kind: str) -> None:
    server = new_server(server_kind, idle_timeout=0.3)
    server.hook_request("ping", lambda: "pong")

    @server.method
    async def slow() -> str:
        await anyio.sleep(0.5)
        return "done"

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("slow", id=1))  # a connection at work is not idle
        assert peer.receive(timeout=5) == {"jsonrpc": "2.0", "id": 1, "result": "done"}
        peer.send(message("ping", id=2))
        assert peer.receive()["result"] == "pong"
        assert peer.receive_eof(timeout=5) == b""  # closed after 0.3 s without traffic


def test_debug_puts_the_exceptions_repr_in_error_data(server_kind: str) -> None:
    server = new_server(server_kind, debug=True)
    server.hook_request("crash", lambda: int("x"))
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("crash", id=1))
        assert peer.receive()["error"] == {
            "code": -32603, "message": "Internal error",
            "data": "ValueError(\"invalid literal for int() with base 10: 'x'\")"}


def test_message_timeout(server_kind: str) -> None:
    server = new_server(server_kind, message_timeout=0.3)
    server.hook_request("ping", lambda: "pong")
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("ping", id=1))
        assert peer.receive()["result"] == "pong"
        peer.send_raw(b'{"jsonrpc":"2.0","meth')  # and never the rest: a slow sender
        assert peer.receive_eof(timeout=5) == b""


def test_message_timeout_does_not_count_while_the_peer_does_not_read(server_kind: str) -> None:
    """The slow-message clock measures the peer's sending, not our reading: while our own
    output is over its bound (the peer does not read it), reading is paused and the rest
    of a half-received message cannot come in, so that time does not close the
    connection. Once the peer reads again, the message completes and is answered."""
    server = new_server(server_kind, message_timeout=0.3)
    server.hook_request("ping", lambda: "pong")
    rest = json.dumps(message("ping", id=2)).encode() + b"\n"
    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(message("ping", id=1))
        assert peer.receive()["result"] == "pong"
        remote = served.one_remote()
        received = served.stats(remote)["bytes_in"]
        peer.send_raw(rest[:20])  # half a message: the clock runs
        wait_for(lambda: served.stats(remote)["bytes_in"] == received + 20)
        big = "x" * (1 << 20)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # (no autotuning)

        def flood() -> None:  # past the kernel's buffers and write_buffer_size: reading pauses
            for _ in range(16):
                remote.notify("big", [big])  # (sent at once; not waiting for the peer to read)

        served.run(flood)
        time.sleep(1.2)  # 4 x message_timeout, not reading
        for _ in range(16):
            assert peer.receive() == message("big", [big], notification=True)
        peer.send_raw(rest[20:])
        assert peer.receive() == {"jsonrpc": "2.0", "id": 2, "result": "pong"}


# ---- calling every peer ------------------------------------------------------------

def test_broadcasts_can_exclude_peers(server_kind: str) -> None:
    server = new_server(server_kind)
    server.hook_request("ping", lambda: "pong")
    with serving(server_kind, server) as served, \
            raw_connect(served.address) as first, raw_connect(served.address) as second:
        for peer in (first, second):
            peer.send(message("ping", id=1))
            assert peer.receive()["result"] == "pong"
        remotes = served.remotes()
        assert len(remotes) == 2
        served.broadcast("news", ["some"], exclude=remotes[0])
        served.broadcast("news", ["none"], exclude=remotes)
        served.broadcast("news", ["end"])
        got = {}
        for peer in (first, second):
            notes = [peer.receive()["params"][0]]
            while notes[-1] != "end":
                notes.append(peer.receive()["params"][0])
            got[peer] = notes
        assert sorted(got.values()) == [["end"], ["some", "end"]]
        # broadcast_request(exclude=) likewise: only remotes[0] (the one that had no "some")
        target = next(peer for peer, notes in got.items() if notes == ["end"])
        other = first if target is second else second
        results: list[Any] = []
        caller = threading.Thread(
            target=lambda: results.append(served.broadcast_request("who", exclude=[remotes[1]], timeout=5)))
        caller.start()
        request = target.receive()
        assert request["method"] == "who"
        target.send({"jsonrpc": "2.0", "id": request["id"], "result": "me"})
        caller.join(5)
        assert results == [{remotes[0]: "me"}]
        assert other.nothing_within(0.05)


# ---- peer credentials -------------------------------------------------------------------

unix_only = pytest.mark.skipif(not hasattr(os, "getuid") or sys.platform != "linux",
                               reason="SO_PEERCRED is Linux's")


@unix_only
def test_allowed_uids_refuses_others_and_every_tcp_peer(server_kind: str, tmp_path: Path) -> None:
    """Fail closed: without matching credentials (other uid; TCP: none at all), the
    connection is closed before anything it sent is read."""
    handled: list[int] = []
    for allowed in ({os.getuid() + 1}, {os.getuid()}):
        path = tmp_path / "app.sock"
        server = new_server(server_kind, allowed_uids=allowed)
        server.hook_request("ping", lambda: handled.append(1) or "pong")
        with serving(server_kind, server, "tcp://127.0.0.1:0", f"unix:{path}") as served:
            tcp, unix = served.addresses
            assert tcp.startswith("tcp://") and unix.startswith("unix:")
            with raw_connect(tcp) as peer:  # no credentials: refused
                try:
                    peer.send(message("ping", id=1))
                except OSError:  # (closed already)
                    pass
                assert peer.receive_eof() == b""
            with raw_connect(unix) as peer:
                try:
                    peer.send(message("ping", id=1))
                except OSError:
                    assert os.getuid() not in allowed
                if os.getuid() in allowed:
                    assert peer.receive()["result"] == "pong"
                    remote = served.one_remote()
                    creds, name = served.run(lambda r=remote: (r.peer_credentials, r.remote_address))
                    assert creds.uid == os.getuid() and name.startswith("unix:pid=")
                else:
                    assert peer.receive_eof() == b""
    assert handled == [1]


def test_max_concurrency_makes_the_rest_wait_and_drops_nothing(server_kind: str) -> None:
    server = new_server(server_kind, max_concurrency=2)
    running: list[int] = []
    most: list[int] = [0]
    lock = threading.Lock()  # (blocking handlers run in threads)

    @server.method
    async def work(i: int) -> int:
        with lock:
            running.append(i)
            most[0] = max(most[0], len(running))
        await anyio.sleep(0.03)
        with lock:
            running.remove(i)
        return i

    with serving(server_kind, server) as served, raw_connect(served.address) as peer:
        peer.send(*(message("work", [i], i) for i in range(10)))
        answers = sorted(peer.receive()["result"] for _ in range(10))
        assert answers == list(range(10))
        assert most[0] == 2
        remote = served.one_remote()
        wait_for(lambda: served.stats(remote)["handlers_running"] == 0)




@unix_only
@pytest.mark.parametrize("server_kind", [
    "asyncio",
    "trio",
    "blocking",
])
def test_a_peer_not_allowed_gets_nothing_even_from_a_full_server(server_kind: str, tmp_path: Path) -> None:
    server = new_server(server_kind, allowed_uids={os.getuid()}, max_connections=1)
    server.hook_request("ping", lambda: "pong")
    path = tmp_path / "app.sock"
    with serving(server_kind, server, "tcp://127.0.0.1:0", f"unix:{path}") as served:
        tcp, unix = served.addresses
        with raw_connect(unix) as member:
            member.send(message("ping", id=1))
            assert member.receive()["result"] == "pong"
            with raw_connect(tcp) as stranger:
                assert stranger.receive_eof() == b""
