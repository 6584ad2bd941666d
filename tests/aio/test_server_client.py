"""Server, Client and Remote: registration, binding, errors, both directions, batches."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from ezipc_adapters import (
    Call,
    Client,
    ConnectionClosed,
    ErrorCode,
    LimitExceeded,
    Remote,
    RemoteError,
    RequestCancelled,
    Server,
    connect,
)

from .conftest import raw_connect, serving

pytestmark = pytest.mark.anyio


def make_server(**options: Any) -> Server:
    server = Server(**options)

    @server.hook_request("subtract")  # decorator form
    def subtract(minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    server.hook_request("sum", lambda *xs: sum(xs))  # two-argument form

    @server.method  # the function's own name
    async def echo(value: Any = None) -> Any:
        await anyio.sleep(0)
        return value

    @server.hook_request  # bare decorator
    def whoami(remote: Remote) -> str:
        return remote.remote_address

    @server.method
    def fail() -> None:
        raise ValueError("secret detail /etc/passwd")

    @server.method
    def refuse() -> None:
        raise RemoteError(-32099, "no thanks", {"why": "testing"})

    @server.method
    def nan() -> float:
        return float("nan")

    @server.method
    def kw_only(a: int, *, b: int = 2) -> int:
        return a * b

    return server


async def test_params_bind_to_the_signature() -> None:
    async with serving(make_server()) as (address,), connect(address) as remote:
        assert await remote.request("subtract", [42, 23]) == 19
        assert await remote.request("subtract", {"subtrahend": 23, "minuend": 42}) == 19
        assert await remote.request("subtract", (10, 3)) == 7  # a tuple is sent as a list
        assert await remote.request("sum", [1, 2, 3, 4]) == 10
        assert await remote.request("sum") == 0
        assert await remote.request("echo", ["x"]) == "x"
        assert await remote.request("echo") is None
        assert await remote.request("kw_only", {"a": 3, "b": 4}) == 12
        assert await remote.request("kw_only", [3]) == 6
        assert (await remote.request("whoami")).startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("subtract", [1]),
        ("subtract", [1, 2, 3]),
        ("subtract", {"minuend": 1}),
        ("subtract", {"minuend": 1, "subtrahend": 2, "extra": 3}),
        ("subtract", None),
        ("kw_only", [1, 2]),
        ("whoami", {"remote": 1}),
    ],
)
async def test_params_that_do_not_fit_are_invalid_params(method: str, params: Any) -> None:
    async with serving(make_server()) as (address,), connect(address) as remote:
        with pytest.raises(RemoteError) as info:
            await remote.request(method, params)
        assert info.value.code == ErrorCode.INVALID_PARAMS
        assert "Traceback" not in info.value.message


async def test_errors_map_to_codes_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(make_server()) as (address,), connect(address) as remote:
        with pytest.raises(RemoteError) as info:
            await remote.request("nope")
        assert info.value.code == ErrorCode.METHOD_NOT_FOUND
        with caplog.at_level(logging.ERROR, "ezipc"):
            with pytest.raises(RemoteError) as info:
                await remote.request("fail")
        assert (info.value.code, info.value.message, info.value.data) == (-32603, "Internal error", None)
        assert "secret" not in str(info.value)
        assert "secret detail" in caplog.text and "Traceback" in caplog.text  # kept locally
        with pytest.raises(RemoteError) as info:
            await remote.request("refuse")
        assert (info.value.code, info.value.message, info.value.data) == (-32099, "no thanks", {"why": "testing"})
        with pytest.raises(RemoteError) as info:
            await remote.request("nan")  # NaN is not JSON: an internal error, not a broken stream
        assert info.value.code == ErrorCode.INTERNAL_ERROR
        assert await remote.request("sum", [1]) == 1  # and the connection is fine


async def test_debug_option_adds_the_exception_repr_only() -> None:
    async with serving(make_server(debug=True)) as (address,), connect(address) as remote:
        with pytest.raises(RemoteError) as info:
            await remote.request("fail")
        assert info.value.data == "ValueError('secret detail /etc/passwd')"


async def test_handle_styles_await_later_and_callbacks() -> None:
    finished: list[Any] = []

    async def async_callback(call: Call) -> None:
        await anyio.sleep(0)
        finished.append(("async", call.result()))

    async with serving(make_server()) as (address,), connect(address) as remote:
        first = remote.request("sum", [1, 2])
        second = remote.request("subtract", [5, 1], callback=lambda call: finished.append(("sync", call.result())))
        third = remote.request("echo", ["x"], callback=async_callback)
        failing = remote.request("nope")
        assert await second == 4
        assert await first == 3
        assert await first == 3  # awaiting twice is fine
        assert await third == "x"
        with pytest.raises(RemoteError):
            await failing
        assert failing.done() and isinstance(failing.exception(), RemoteError)
        with anyio.fail_after(5):
            while len(finished) < 2:
                await anyio.sleep(0.01)
    assert sorted(finished) == [("async", "x"), ("sync", 4)]


async def test_notify_and_batch() -> None:
    server = make_server()
    got: list[Any] = []
    done = anyio.Event()

    @server.hook_notif("log")
    def log_it(*items: Any) -> None:
        got.append(items)
        if len(got) == 2:
            done.set()

    async with serving(server) as (address,), connect(address) as remote:
        await remote.notify("log", [1, 2])
        results = await remote.batch(
            [("sum", [1, 2, 4]), ("subtract", [42, 23]), ("nope", None), ("echo", {"value": None})],
            notify=[("log", ["in batch"])],
        )
        assert results[:2] == [7, 19]
        assert isinstance(results[2], RemoteError) and results[2].code == -32601
        assert results[3] is None
        with anyio.fail_after(5):
            await done.wait()
    assert got == [(1, 2), ("in batch",)]


async def test_server_calls_its_client_and_nested_calls() -> None:
    server = make_server()

    @server.method
    async def relay(depth: int, remote: Remote) -> list[Any]:
        # Call back into the client, which calls back into us, and so on.
        if depth == 0:
            return ["bottom"]
        inner = await remote.request("client/down", [depth - 1])
        return [depth, *inner]

    client = Client()

    @client.hook_request("client/down")
    async def down(depth: int, remote: Remote) -> Any:
        return await remote.request("relay", [depth])

    @client.hook_request("client/ping")
    def ping() -> str:
        return "pong"

    async with serving(server) as (address,), client.connect(address) as remote:
        assert await remote.request("relay", [6]) == [6, 5, 4, 3, 2, 1, "bottom"]
        with anyio.fail_after(5):
            while not server.remotes:
                await anyio.sleep(0.01)
        (server_side,) = server.remotes
        assert await server_side.request("client/ping") == "pong"


@pytest.mark.parametrize("limit", [5, 64])
async def test_slow_handlers_calling_back_do_not_deadlock(limit: int) -> None:
    # The original EZ-IPC had five workers per connection: five slow handlers that called
    # back into the client deadlocked it. Here as many as the limit, and more, all finish.
    server = Server(max_concurrency=limit)

    @server.method
    async def slow(i: int, remote: Remote) -> int:
        await anyio.sleep(0.05)
        return int(await remote.request("client/double", [i]))

    client = Client()
    client.hook_request("client/double", lambda i: i * 2)
    results: dict[int, int] = {}
    async with serving(server) as (address,), client.connect(address) as remote:

        async def one(i: int) -> None:
            results[i] = await remote.request("slow", [i])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(limit * 2):
                    tg.start_soon(one, i)
    assert results == {i: i * 2 for i in range(limit * 2)}


async def test_concurrency_limit_is_backpressure_not_loss() -> None:
    server = Server(max_concurrency=2)
    running = 0
    peak = 0

    @server.method
    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1
        return i

    async with serving(server) as (address,), connect(address) as remote:
        calls = [remote.request("work", [i]) for i in range(20)]
        with anyio.fail_after(10):
            assert [await call for call in calls] == list(range(20))
    assert peak == 2


async def test_notifications_in_order_and_requests_after_earlier_notifications() -> None:
    server = Server()
    log: list[Any] = []

    @server.hook_notif("step")
    async def step(i: int) -> None:
        if i % 3 == 0:
            await anyio.sleep(0.01)  # a slow one must not be overtaken
        log.append(i)

    @server.method
    def snapshot() -> list[Any]:
        return list(log)

    async with serving(server) as (address,), connect(address) as remote:
        for i in range(10):
            await remote.notify("step", [i])
        seen = await remote.request("snapshot")
        # Notifications run one at a time; the request starts once all ten have started:
        # 0..8 have finished, and 9 is in its sleep.
        assert seen == list(range(9))
        with anyio.fail_after(5):
            while len(log) < 10:
                await anyio.sleep(0.01)
    assert log == list(range(10))


async def test_notification_order_is_arrival_order() -> None:
    server = Server()
    log: list[int] = []
    done = anyio.Event()

    @server.hook_notif("step")
    async def step(i: int) -> None:
        await anyio.sleep(0.001 * (i % 4))
        log.append(i)
        if i == 49:
            done.set()

    async with serving(server) as (address,), connect(address) as remote:
        for i in range(50):
            await remote.notify("step", [i])
        with anyio.fail_after(10):
            await done.wait()
    assert log == list(range(50))


async def test_connect_and_disconnect_hooks() -> None:
    server = make_server()
    events: list[str] = []
    gate = anyio.Event()

    @server.hook_connect
    async def on_connect(remote: Remote) -> None:
        events.append("connect")
        remote.data["user"] = "alice"
        await anyio.sleep(0.05)  # requests wait for this
        events.append("connect done")

    @server.hook_disconnect
    def on_disconnect(remote: Remote) -> None:
        events.append(f"disconnect {remote.data['user']}")
        gate.set()

    @server.method
    def user(remote: Remote) -> str:
        events.append("request")
        return str(remote.data["user"])

    async with serving(server) as (address,):
        async with connect(address) as remote:
            assert await remote.request("user") == "alice"
        with anyio.fail_after(5):
            await gate.wait()
    assert events == ["connect", "connect done", "request", "disconnect alice"]


async def test_a_connect_hook_that_raises_rejects_the_connection() -> None:
    server = make_server()

    @server.hook_connect
    def reject(remote: Remote) -> None:
        raise PermissionError("not you")

    async with serving(server) as (address,), connect(address) as remote:
        with pytest.raises(ConnectionClosed):
            await remote.request("sum", [1])


async def test_broadcast_to_every_client() -> None:
    server = Server()
    got: list[Any] = []

    def client_for(name: str) -> Client:
        client = Client()
        client.hook_notif("news", lambda text: got.append((name, text)))

        @client.hook_request("name")
        def answer() -> str:
            if name == "c":
                raise RemoteError(1, "shy")
            return name

        return client

    async with serving(server) as (address,):
        async with (
            client_for("a").connect(address),
            client_for("b").connect(address),
            client_for("c").connect(address),
        ):
            with anyio.fail_after(5):
                while len(server.remotes) < 3:
                    await anyio.sleep(0.01)
            await server.broadcast("news", ["hello"])
            answers = await server.bcast_request("name", timeout=5)
            assert sorted(v for v in answers.values() if isinstance(v, str)) == ["a", "b"]
            assert [type(v) for v in answers.values()].count(RemoteError) == 1
            with anyio.fail_after(5):
                while len(got) < 3:
                    await anyio.sleep(0.01)
    assert sorted(got) == [("a", "hello"), ("b", "hello"), ("c", "hello")]


async def test_pending_limit_raises_at_once() -> None:
    server = Server()
    release = anyio.Event()

    @server.method
    async def wait() -> str:
        await release.wait()
        return "ok"

    async with serving(server) as (address,), connect(address, max_pending=3) as remote:
        calls = [remote.request("wait") for _ in range(3)]
        with pytest.raises(LimitExceeded):
            remote.request("wait")
        release.set()
        assert [await c for c in calls] == ["ok"] * 3
        assert await remote.request("wait") == "ok"  # room again


async def test_stats_count_traffic() -> None:
    async with serving(make_server()) as (address,), connect(address) as remote:
        for i in range(5):
            await remote.request("sum", [i])
        await remote.notify("nothing")
        with pytest.raises(RemoteError):
            await remote.request("nope")
        pending = remote.request("echo", [1])
        assert remote.stats.requests_pending == 1
        await pending
        stats = remote.stats
        assert stats.messages_out == 8 and stats.messages_in == 7
        assert stats.bytes_out > 8 * 30 and stats.bytes_in > 7 * 20
        assert stats.requests_pending == 0 and stats.errors == 0


async def test_call_cancel_tells_the_peer() -> None:
    server = Server()
    cancelled = anyio.Event()

    @server.method
    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with serving(server) as (address,), connect(address) as remote:
        call = remote.request("forever")
        await anyio.sleep(0.05)
        assert call.cancel() is True
        assert call.cancel() is False
        with pytest.raises(RequestCancelled):
            await call
        with anyio.fail_after(5):
            await cancelled.wait()


async def test_a_cancelled_waiter_cancels_the_call_and_the_others_see_that() -> None:
    server = Server()
    server.hook_request("forever", anyio.sleep_forever)
    outcomes: list[str] = []

    async def wait(call: Call) -> None:
        try:
            await call
        except RequestCancelled:
            outcomes.append("RequestCancelled")

    async with serving(server) as (address,), connect(address) as remote:
        call = remote.request("forever")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, call)
                tg.start_soon(wait, call)
                with anyio.move_on_after(0.1) as scope:
                    await call  # all three wait; this one's wait is cancelled, so is the call
                assert scope.cancelled_caught
        assert outcomes == ["RequestCancelled"] * 2
        assert call.done() and isinstance(call.exception(), RequestCancelled)


async def test_requests_after_close_raise_connection_closed() -> None:
    async with serving(make_server()) as (address,):
        async with connect(address) as remote:
            pass
        with pytest.raises(ConnectionClosed):
            remote.request("sum")
        with pytest.raises(ConnectionClosed):
            await remote.notify("x")


async def test_invalid_input_is_answered_and_the_connection_survives() -> None:
    async with serving(make_server()) as (address,), raw_connect(address) as peer:
        await peer.stream.send(b"\xff\xfe not utf-8\n")
        assert (await peer.receive())["error"]["code"] == -32700
        await peer.stream.send(b'{"jsonrpc":"2.0","method":"sum","params":[NaN],"id":1}\n')
        assert (await peer.receive())["error"]["code"] == -32700
        await peer.send({"jsonrpc": "2.0", "method": "rpc.discover", "id": 2})
        assert (await peer.receive())["error"]["code"] == -32601
        await peer.send({"jsonrpc": "2.0", "result": 1, "id": 99})  # nobody asked: no answer
        await peer.send({"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 3})
        assert await peer.receive() == {"jsonrpc": "2.0", "id": 3, "result": 3}


async def test_errors_in_the_connect_block_are_not_wrapped() -> None:
    async with serving(make_server()) as (address,):
        with pytest.raises(KeyError):
            async with connect(address) as remote:
                await remote.request("sum", [1])
                raise KeyError("mine")


async def test_remote_may_stand_anywhere_even_before_kwargs() -> None:
    server = Server()

    @server.method
    async def tools_call(remote: Remote, name: str, arguments: Any = None, **extra: Any) -> list[Any]:
        return [remote.remote_address.startswith("tcp://"), name, arguments, sorted(extra)]

    async with serving(server) as (address,), connect(address) as remote:
        got = await remote.request("tools_call", {"name": "add", "arguments": {"a": 2}, "_meta": {}})
        assert got == [True, "add", {"a": 2}, ["_meta"]]
        assert await remote.request("tools_call", ["add"]) == [True, "add", None, []]


async def test_broadcast_can_exclude_the_sender() -> None:
    server = Server()
    heard: dict[str, list[str]] = {"a": [], "b": []}

    @server.method
    async def say(text: str, remote: Remote) -> None:
        await server.broadcast("heard", [text], exclude=remote)

    def client_for(name: str) -> Client:
        client = Client()
        client.hook_notif("heard", lambda text: heard[name].append(text))
        return client

    async with serving(server) as (address,):
        async with client_for("a").connect(address) as a, client_for("b").connect(address) as b:
            with anyio.fail_after(5):
                while len(server.remotes) < 2:
                    await anyio.sleep(0.01)
            await a.request("say", ["from a"])
            await b.request("say", ["from b"])
            with anyio.fail_after(5):
                while not (heard["a"] and heard["b"]):
                    await anyio.sleep(0.01)
    assert heard == {"a": ["from b"], "b": ["from a"]}
