"""An ezipc app run by uvicorn (``ezipc serve ... --listen ws://...``, a subprocess),
against peers no one here wrote, the ``websockets`` library's client and ``httpx``, and
against ezipc's own ws:// and http:// clients (async on asyncio and trio, blocking)."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

import ezipc_adapters.blocking as blocking
from ezipc_adapters import Client, ConnectionClosed, RemoteError, connect

pytestmark = pytest.mark.timeout(60)


def rpc(method: str, params: Any = None, id: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


def http_url(ws_url: str) -> str:
    return "http" + ws_url.removeprefix("ws")


# ---- the websockets library's client ---------------------------------------------------


def test_websockets_client_calls_and_is_called_back(ws_url: str) -> None:
    with ws_connect(ws_url, open_timeout=5) as ws:
        ws.send(json.dumps(rpc("add", [2, 3], 1)))
        assert json.loads(ws.recv(5)) == {"jsonrpc": "2.0", "id": 1, "result": 5}
        ws.send(json.dumps([rpc("add", [1, 1], "a"), rpc("echo", ["quiet"]), rpc("nope", id="b")]))
        answers = {a["id"]: a for a in json.loads(ws.recv(5))}
        assert answers["a"]["result"] == 2 and answers["b"]["error"]["code"] == -32601
        ws.send(json.dumps(rpc("refuse", id=2)))
        assert json.loads(ws.recv(5))["error"] == {"code": 4000, "message": "refused", "data": {"why": "a test"}}
        ws.send("{not json")
        assert json.loads(ws.recv(5))["error"]["code"] == -32700
        ws.send("")  # an empty message is not an end: a parse error too
        assert json.loads(ws.recv(5))["error"]["code"] == -32700
        # The server calls this client back in the middle of a request.
        ws.send(json.dumps(rpc("ask_client", id=3)))
        question = json.loads(ws.recv(5))
        assert question["method"] == "client/name" and question["params"] == {"greeting": "hello"}
        ws.send(json.dumps({"jsonrpc": "2.0", "id": question["id"], "result": "Ada"}))
        assert json.loads(ws.recv(5)) == {"jsonrpc": "2.0", "id": 3, "result": "Ada"}


def test_broadcast_reaches_every_websocket_client(ws_url: str) -> None:
    with ws_connect(ws_url, open_timeout=5) as first, ws_connect(ws_url, open_timeout=5) as second:
        first.send(json.dumps(rpc("shout", ["hi"], 1)))
        got = [json.loads(first.recv(5)), json.loads(first.recv(5))]
        note = next(m for m in got if "method" in m)
        assert note == {"jsonrpc": "2.0", "method": "shout", "params": ["hi"]}
        assert next(m for m in got if "id" in m)["result"] >= 2
        assert json.loads(second.recv(5)) == note


def test_an_oversize_frame_is_answered_and_the_connection_goes_on(ws_url: str) -> None:
    with ws_connect(ws_url, open_timeout=5) as ws:
        ws.send(json.dumps(rpc("echo", ["x" * 5000], 1)))  # over max_message_size=4096
        answer = json.loads(ws.recv(5))
        assert answer["id"] is None and answer["error"]["code"] == -32007
        ws.send(json.dumps(rpc("add", [1, 2], 2)))
        assert json.loads(ws.recv(5))["result"] == 3


def test_a_client_that_disconnects_mid_call(ws_url: str) -> None:
    with httpx.Client(timeout=5) as http:

        def call(method: str) -> Any:
            return http.post(http_url(ws_url), json=rpc(method, id=1)).json()["result"]

        before = call("cancelled")
        with ws_connect(ws_url, open_timeout=5) as ws:
            ws.send(json.dumps(rpc("slow", [30], 1)))
            time.sleep(0.2)  # (the handler is running)
        deadline = time.monotonic() + 5
        while call("cancelled") == before:  # the handler was cancelled, at once
            assert time.monotonic() < deadline, "the handler outlived its connection"
            time.sleep(0.02)
        while call("connections") != 0:
            assert time.monotonic() < deadline, "the connection is still registered"
            time.sleep(0.02)


# ---- httpx ----------------------------------------------------------------------------


def test_httpx_requests_notifications_and_batches(ws_url: str) -> None:
    with httpx.Client(timeout=5) as http:
        url = http_url(ws_url)
        response = http.post(url, json=rpc("add", [40, 2], 1))
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json() == {"jsonrpc": "2.0", "id": 1, "result": 42}
        batch = [rpc("add", [1, 2], "1"), rpc("echo", ["note"]), rpc("nope", id="2"), {"foo": "boo"}]
        answers = http.post(url, json=batch).json()
        assert isinstance(answers, list) and len(answers) == 3
        by_id = {a["id"]: a for a in answers}
        assert by_id["1"]["result"] == 3 and by_id["2"]["error"]["code"] == -32601
        assert by_id[None]["error"]["code"] == -32600
        nothing = http.post(url, json=[rpc("echo", [1]), rpc("echo", [2])])  # notifications only
        assert nothing.status_code == 204 and nothing.content == b""
        assert http.post(url, content=b"{oops", headers={"content-type": "application/json"}).json()["error"][
            "code"] == -32700
        assert http.post(url, json=rpc("ask_client", id=5)).json()["error"]["code"] == -32603  # no way back


def test_http_status_codes(ws_url: str) -> None:
    with httpx.Client(timeout=5) as http:
        url = http_url(ws_url)
        assert http.get(url).status_code == 405
        assert http.get(url).headers["allow"] == "POST"
        assert http.post(url, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        assert http.post(url, json=rpc("echo", ["x" * 5000], 1)).status_code == 413
        assert http.post(url.replace("/rpc", "/elsewhere"), json=rpc("add", [1, 2], 1)).status_code == 404
        chunks = (b'{"jsonrpc":"2.0","method":"echo","params":["' + b"y" * 1000 + b'"]' for _ in range(5))
        streamed = http.post(url, content=chunks, headers={"content-type": "application/json"})
        assert streamed.status_code == 413  # no Content-Length: counted as it arrives


# ---- ezipc's own clients --------------------------------------------------------------


async def _async_client_session(ws_url: str) -> None:
    client = Client()
    client.hook_request("client/name", lambda greeting: f"Ada ({greeting})")
    async with client.connect(ws_url) as remote:
        assert await remote.request("add", [1, 2]) == 3
        assert await remote.request("ask_client") == "Ada (hello)"
        two, missing = await remote.batch([("add", [1, 1]), ("nope", None)])
        assert two == 2 and isinstance(missing, RemoteError) and missing.code == -32601
        with pytest.raises(RemoteError) as info:
            await remote.request("refuse")
        assert info.value.code == 4000 and info.value.data == {"why": "a test"}
    async with connect(http_url(ws_url)) as remote:
        assert await remote.request("add", [1, 2]) == 3
        results = await remote.batch([("add", [2, 2]), ("nope", None)], notify=[("echo", [0])])
        assert results[0] == 4 and isinstance(results[1], RemoteError) and results[1].code == -32601
        await remote.notify("echo", [1])
        with pytest.raises(RemoteError) as info:
            await remote.request("echo", ["x" * 5000])  # the server's limit: HTTP 413
        assert info.value.code == -32007
        assert await remote.request("add", [3, 4]) == 7


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ezipc_async_clients(ws_url: str, backend: str) -> None:
    anyio.run(_async_client_session, ws_url, backend=backend)


def test_ezipc_blocking_clients(ws_url: str) -> None:
    client = blocking.Client()
    client.hook_request("client/name", lambda greeting: f"Ada ({greeting})")
    with client.connect(ws_url) as remote:
        assert remote.request("add", [1, 2]) == 3
        assert remote.request("ask_client") == "Ada (hello)"
        assert remote.submit("add", [2, 3]).result(5) == 5
    with pytest.raises(ConnectionClosed):
        remote.request("add", [1, 2])
    with blocking.connect(http_url(ws_url)) as remote:
        assert remote.request("add", [1, 2]) == 3
        results = remote.batch([("add", [2, 2]), ("nope", None)])
        assert results[0] == 4 and isinstance(results[1], RemoteError)
        remote.notify("echo", [1])
        with pytest.raises(RemoteError) as info:
            remote.request("echo", ["x" * 5000])
        assert info.value.code == -32007
        assert remote.request("add", [3, 4]) == 7


@pytest.mark.parametrize("kind", ["blocking", "asyncio", "trio"])
def test_closing_an_http_client_with_a_call_in_flight_is_prompt(ws_url: str, kind: str) -> None:
    """A call in flight (its POST awaits the answer; after a timeout, say), then a
    notification, then close(): the call fails at once, close() does not wait for the
    answer nobody wants (it took 2 s, the flush or linger time, on every client), and the
    notification queued behind it is still delivered (on a new connection)."""
    url, text = http_url(ws_url), f"bye from {kind}"
    if kind == "blocking":
        remote = blocking.connect(url)
        assert remote.request("add", [1, 2], timeout=5) == 3
        future = remote.submit("slow", [5])
        time.sleep(0.3)  # (its POST is sent)
        remote.notify("note", [text])
        started = time.monotonic()
        remote.close()
        took = time.monotonic() - started
        with pytest.raises(ConnectionClosed):
            future.result(5)
    else:

        async def run() -> float:
            failed: list[BaseException] = []
            async with connect(url) as remote:
                assert await remote.request("add", [1, 2], timeout=5) == 3

                async def slow() -> None:
                    try:
                        await remote.request("slow", [5])
                    except ConnectionClosed as exc:
                        failed.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow)
                    await anyio.sleep(0.3)  # (its POST is sent)
                    await remote.notify("note", [text])
                    started = time.monotonic()
                    await remote.aclose()
                    took = time.monotonic() - started
            assert len(failed) == 1
            return took

        took = anyio.run(run, backend=kind)
    assert took < 1.0
    with blocking.connect(url) as remote:
        assert text in remote.request("notes", timeout=5)
