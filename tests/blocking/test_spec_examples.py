"""The specification's twelve examples over a real TCP socket, in both framings: a raw
socket client compares the exact answers, and the blocking client gets the same results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ezipc_adapters.blocking import RemoteError, Server, connect

from .conftest import raw_connect, serving

pytestmark = pytest.mark.timeout(30)

FRAMINGS = ["ndjson", "content-length"]


def spec_server(framing: str) -> tuple[Server, list[Any]]:
    server = Server(framing=framing)
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


ANSWERED = [
    (
        '{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}',
        {"jsonrpc": "2.0", "result": 19, "id": 1},
    ),
    (
        '{"jsonrpc":"2.0","method":"subtract","params":[23,42],"id":2}',
        {"jsonrpc": "2.0", "result": -19, "id": 2},
    ),
    (
        '{"jsonrpc":"2.0","method":"subtract","params":{"subtrahend":23,"minuend":42},"id":3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
    ),
    (
        '{"jsonrpc":"2.0","method":"subtract","params":{"minuend":42,"subtrahend":23},"id":4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
    ),
    ('{"jsonrpc":"2.0","method":"foobar","id":"1"}', {"jsonrpc": "2.0", "error": -32601, "id": "1"}),
    (
        '{"jsonrpc":"2.0","method":"foobar, "params":"bar","baz]',
        {"jsonrpc": "2.0", "error": -32700, "id": None},
    ),
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

SILENT = [
    '{"jsonrpc":"2.0","method":"update","params":[1,2,3,4,5]}',
    '{"jsonrpc":"2.0","method":"foobar"}',
    '[{"jsonrpc":"2.0","method":"notify_sum","params":[1,2,4]},{"jsonrpc":"2.0","method":"notify_hello","params":[7]}]',
]


def normalize(answer: Any) -> Any:
    """Error objects reduced to their code (messages are ours to word); batches sorted."""
    if isinstance(answer, list):
        return sorted((normalize(a) for a in answer), key=lambda a: json.dumps(a, sort_keys=True))
    assert set(answer) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), answer
    out = dict(answer)
    if isinstance(out.get("error"), dict):
        assert isinstance(out["error"]["code"], int) and isinstance(out["error"]["message"], str)
        assert "data" not in out["error"], "no detail (tracebacks) goes to the peer"
        out["error"] = out["error"]["code"]
    return out


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_answered_example(framing: str) -> None:
    server, _ = spec_server(framing)
    with serving(server) as (address,), raw_connect(address, framing) as peer:
        for text, expected in ANSWERED:
            peer.send(text)
            assert normalize(peer.receive()) == normalize(expected), text


@pytest.mark.parametrize("framing", FRAMINGS)
def test_notifications_get_no_answer_at_all(framing: str) -> None:
    server, seen = spec_server(framing)
    with serving(server) as (address,), raw_connect(address, framing) as peer:
        for text in SILENT:
            peer.send(text)
        # The next answer on the wire belongs to this request: nothing came before it.
        peer.send('{"jsonrpc":"2.0","method":"subtract","params":[5,3],"id":"after"}')
        assert peer.receive() == {"jsonrpc": "2.0", "result": 2, "id": "after"}
    assert seen == [("update", (1, 2, 3, 4, 5)), ("notify_sum", (1, 2, 4)), ("notify_hello", 7)]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_blocking_client_against_blocking_server(framing: str) -> None:
    server, seen = spec_server(framing)
    with serving(server) as (address,), connect(address, framing=framing) as remote:
        assert remote.request("subtract", [42, 23]) == 19
        assert remote.request("subtract", (23, 42)) == -19  # a tuple is sent as a list
        assert remote.request("subtract", {"subtrahend": 23, "minuend": 42}) == 19
        assert remote.request("subtract", {"minuend": 42, "subtrahend": 23}) == 19
        remote.notify("update", [1, 2, 3, 4, 5])
        remote.notify("foobar")
        with pytest.raises(RemoteError) as info:
            remote.request("foobar")
        assert info.value.code == -32601
        results = remote.batch(
            [("sum", [1, 2, 4]), ("subtract", [42, 23]), ("foo.get", {"name": "myself"}), ("get_data", None)],
            notify=[("notify_hello", [7])],
        )
        assert results[:2] == [7, 19] and results[3] == ["hello", 5]
        assert isinstance(results[2], RemoteError) and results[2].code == -32601
        remote.batch([], notify=[("notify_sum", [1, 2, 4]), ("notify_hello", [7])])
        assert remote.request("subtract", [5, 3]) == 2  # everything before it was handled
        assert remote.stats.errors == 0
    assert seen == [("update", (1, 2, 3, 4, 5)), ("notify_hello", 7), ("notify_sum", (1, 2, 4)),
                    ("notify_hello", 7)]


def test_auto_framing_answers_each_connection_in_kind() -> None:
    server, _ = spec_server("auto")
    with serving(server) as (address,):
        for framing in FRAMINGS:
            with raw_connect(address, framing) as peer:
                peer.send('{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}')
                assert peer.receive() == {"jsonrpc": "2.0", "result": 19, "id": 1}
            with connect(address, framing=framing) as remote:
                assert remote.request("subtract", [42, 23]) == 19


def test_unusual_but_legal_ids_are_echoed_exactly() -> None:
    server, _ = spec_server("ndjson")
    with serving(server) as (address,), raw_connect(address) as peer:
        for id in (None, 1.5, 0, "", -7, "x" * 100):
            peer.send({"jsonrpc": "2.0", "method": "subtract", "params": [1, 1], "id": id})
            assert peer.receive() == {"jsonrpc": "2.0", "result": 0, "id": id}
