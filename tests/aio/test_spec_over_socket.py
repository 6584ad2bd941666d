"""The specification's examples, byte for byte, over a real TCP socket in both framings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ezipc_adapters import Server

from .conftest import raw_connect, serving

pytestmark = pytest.mark.anyio

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
        out["error"] = out["error"]["code"]
    return out


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_every_answered_example(framing: str) -> None:
    server, _ = spec_server(framing)
    async with serving(server) as (address,), raw_connect(address, framing) as peer:
        for text, expected in ANSWERED:
            await peer.send(text)
            assert normalize(await peer.receive()) == normalize(expected), text


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_notifications_get_no_answer_at_all(framing: str) -> None:
    server, seen = spec_server(framing)
    async with serving(server) as (address,), raw_connect(address, framing) as peer:
        for text in SILENT:
            await peer.send(text)
        # The next answer on the wire belongs to this request: nothing came before it.
        await peer.send('{"jsonrpc":"2.0","method":"subtract","params":[5,3],"id":"after"}')
        assert await peer.receive() == {"jsonrpc": "2.0", "result": 2, "id": "after"}
    assert seen == [("update", (1, 2, 3, 4, 5)), ("notify_sum", (1, 2, 4)), ("notify_hello", 7)]


async def test_auto_framing_answers_each_connection_in_kind() -> None:
    server, _ = spec_server("auto")
    async with serving(server) as (address,):
        for framing in FRAMINGS:
            async with raw_connect(address, framing) as peer:
                await peer.send('{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}')
                assert await peer.receive() == {"jsonrpc": "2.0", "result": 19, "id": 1}


async def test_unusual_but_legal_ids_are_echoed_exactly() -> None:
    server, _ = spec_server("ndjson")
    async with serving(server) as (address,), raw_connect(address) as peer:
        for id in (None, 1.5, 0, "", -7, "x" * 100):
            await peer.send({"jsonrpc": "2.0", "method": "subtract", "params": [1, 1], "id": id})
            assert await peer.receive() == {"jsonrpc": "2.0", "result": 0, "id": id}
