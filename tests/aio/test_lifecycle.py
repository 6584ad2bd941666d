"""Cancellation, timeouts, disconnects, graceful shutdown and limits."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from ezipc_adapters import Client, ConnectionClosed, ErrorCode, Remote, RemoteError, Server, connect

from .conftest import raw_connect, serving

pytestmark = pytest.mark.anyio


class Recorder:
    """A server whose ``hang`` handler never finishes, recording how it ends."""

    def __init__(self, **options: Any) -> None:
        self.server = Server(**options)
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.notifications: list[Any] = []
        self.server.hook_request("hang", self.hang)
        self.server.hook_request("sum", lambda *xs: sum(xs))

    async def hang(self) -> None:
        self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()


@pytest.mark.parametrize(
    ("profile", "wire"),
    [
        ("lsp", {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}}),
        ("mcp", {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    ],
)
async def test_timeout_sends_the_cancel_notification(profile: str, wire: dict[str, Any]) -> None:
    # A raw peer plays the server, so we see exactly what the client writes.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        seen: list[Any] = []

        async def peer() -> None:
            from .conftest import RawPeer

            stream = await listener.listeners[0].accept()
            async with stream:
                raw = RawPeer(stream, "ndjson")
                seen.append(await raw.receive())
                seen.append(await raw.receive())
                # Answer late: the client has given up and must drop this quietly.
                await raw.send({"jsonrpc": "2.0", "id": 1, "error": {"code": -32800, "message": "cancelled"}})
                seen.append(await raw.receive())
                await raw.send({"jsonrpc": "2.0", "id": 2, "result": 3})

        tg.start_soon(peer)
        async with connect(f"tcp://127.0.0.1:{port}", cancellation=profile) as remote:
            with pytest.raises(TimeoutError):
                await remote.request("hang", timeout=0.05)
            assert await remote.request("sum", [1, 2], timeout=5) == 3
            assert remote.stats.late_responses == 1
    assert seen[0] == {"jsonrpc": "2.0", "method": "hang", "id": 1}
    assert seen[1] == wire
    assert seen[2]["method"] == "sum"


@pytest.mark.parametrize("profile", ["lsp", "mcp", None])
async def test_server_cancels_the_handler(profile: str | None) -> None:
    rec = Recorder(cancellation=profile)
    async with serving(rec.server) as (address,), connect(address, cancellation=profile) as remote:
        with pytest.raises(TimeoutError):
            await remote.request("hang", timeout=0.2)
        if profile is None:
            assert not rec.cancelled.is_set()  # nothing was said: the handler goes on
        else:
            with anyio.fail_after(5):
                await rec.cancelled.wait()
        assert await remote.request("sum", [2, 2]) == 4
        # LSP answers the cancelled request (-32800), dropped as late; MCP does not answer.
        with anyio.fail_after(5):
            while profile == "lsp" and remote.stats.late_responses == 0:
                await anyio.sleep(0.01)
        assert remote.stats.late_responses == (1 if profile == "lsp" else 0)


async def test_lsp_cancel_answers_minus_32800_on_the_wire() -> None:
    rec = Recorder()
    async with serving(rec.server) as (address,), raw_connect(address) as peer:
        await peer.send({"jsonrpc": "2.0", "method": "hang", "id": "a"})
        with anyio.fail_after(5):
            await rec.started.wait()
        await peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "a"}})
        answer = await peer.receive()
        assert answer["id"] == "a" and answer["error"]["code"] == ErrorCode.REQUEST_CANCELLED
        # A second cancel for an answered id is ignored; the connection goes on.
        await peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "a"}})
        await peer.send({"jsonrpc": "2.0", "method": "sum", "params": [1], "id": "b"})
        assert await peer.receive() == {"jsonrpc": "2.0", "id": "b", "result": 1}


async def test_mcp_cancel_is_not_answered() -> None:
    rec = Recorder(cancellation="mcp")
    async with serving(rec.server) as (address,), raw_connect(address) as peer:
        await peer.send({"jsonrpc": "2.0", "method": "hang", "id": 7})
        with anyio.fail_after(5):
            await rec.started.wait()
        await peer.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})
        with anyio.fail_after(5):
            await rec.cancelled.wait()
        await peer.send({"jsonrpc": "2.0", "method": "sum", "params": [5], "id": 8})
        assert await peer.receive() == {"jsonrpc": "2.0", "id": 8, "result": 5}  # nothing for 7


async def test_cancelling_the_caller_cancels_the_request() -> None:
    rec = Recorder()
    async with serving(rec.server) as (address,), connect(address) as remote:
        with anyio.move_on_after(0.1) as scope:
            await remote.request("hang")
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            await rec.cancelled.wait()


async def test_request_timeout_option_is_the_default_timeout() -> None:
    rec = Recorder()
    async with serving(rec.server) as (address,), connect(address, request_timeout=0.05) as remote:
        with pytest.raises(TimeoutError):
            await remote.request("hang")
        # A callback-style call times out even if nobody awaits it.
        ended: list[Any] = []
        remote.request("hang", callback=lambda call: ended.append(type(call.exception())))
        with anyio.fail_after(5):
            while not ended:
                await anyio.sleep(0.01)
        assert ended == [TimeoutError]


async def test_disconnect_fails_every_pending_call_at_once() -> None:
    server = Server()
    arrived = anyio.Event()
    count = 0

    @server.method
    async def hang(remote: Remote) -> None:
        nonlocal count
        count += 1
        if count == 3:
            arrived.set()
        await anyio.sleep_forever()

    @server.method
    def crash(remote: Remote) -> None:
        remote.close("test")

    async with serving(server) as (address,), connect(address) as remote:
        calls = [remote.request("hang") for _ in range(3)]
        with anyio.fail_after(5):
            await arrived.wait()
        remote.request("crash")
        with anyio.fail_after(2):
            for call in calls:
                with pytest.raises(ConnectionClosed):
                    await call
        assert remote.closed
        with pytest.raises(ConnectionClosed):
            remote.request("hang")


async def test_client_going_away_cancels_server_handlers_and_runs_disconnect_once() -> None:
    # After EOF the server gives requests already received up to shutdown_timeout to
    # finish (the peer may only have closed its sending side), then cancels them.
    rec = Recorder(shutdown_timeout=0.3)
    disconnects: list[Remote] = []
    rec.server.hook_disconnect(disconnects.append)
    async with serving(rec.server) as (address,):
        async with connect(address) as remote:
            remote.request("hang")
            with anyio.fail_after(5):
                await rec.started.wait()
        with anyio.fail_after(5):
            await rec.cancelled.wait()
            while not disconnects or rec.server.remotes:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)
    assert len(disconnects) == 1


async def test_server_to_client_call_fails_when_the_client_leaves() -> None:
    server = Server()
    outcome: list[Any] = []
    done = anyio.Event()

    @server.method
    async def ask_back(remote: Remote) -> str:
        try:
            await remote.request("client/never")
        except ConnectionClosed as exc:
            outcome.append(exc)
        finally:
            done.set()
        return "unreachable"

    client = Client()

    @client.hook_request("client/never")
    async def never() -> None:
        await anyio.sleep_forever()

    async with serving(server) as (address,):
        async with client.connect(address) as remote:
            remote.request("ask_back")
            await anyio.sleep(0.1)
        with anyio.fail_after(5):
            await done.wait()
    # The server's handler was cancelled with its connection, or saw ConnectionClosed.
    assert all(isinstance(e, ConnectionClosed) for e in outcome)


async def test_graceful_shutdown_finishes_work_in_flight() -> None:
    server = Server(shutdown_timeout=0.5)
    started = anyio.Event()

    @server.method
    async def quick() -> str:
        started.set()
        await anyio.sleep(0.1)
        return "finished"

    @server.method
    async def slow() -> str:
        await anyio.sleep(30)
        return "never"

    async with anyio.create_task_group() as tg:
        (address,) = await tg.start(server.serve, "tcp://127.0.0.1:0")
        async with connect(address) as remote:
            quick = remote.request("quick")
            slow = remote.request("slow")
            with anyio.fail_after(5):
                await started.wait()
            server.shutdown()
            assert await quick == "finished"
            with pytest.raises(RemoteError) as info:
                await slow
            assert info.value.code == ErrorCode.SHUTTING_DOWN
            with pytest.raises((ConnectionClosed, OSError)):
                await anyio.sleep(1)  # the server closes the connection
                await remote.request("quick")
    # serve() returned by itself: the task group did not need cancelling.
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", int(address.rsplit(":", 1)[1]))


async def test_max_connections_at_the_edge() -> None:
    server = Server(max_connections=2)
    server.hook_request("ping", lambda: "pong")
    async with serving(server) as (address,):
        async with connect(address) as a, connect(address) as b:
            assert await a.request("ping") == "pong"
            assert await b.request("ping") == "pong"
            async with raw_connect(address) as third:
                answer = await third.receive()
                assert answer["error"]["code"] == ErrorCode.SERVER_BUSY and answer["id"] is None
                assert await third.receive_eof() == b""
            assert await a.request("ping") == "pong"  # the others are unaffected
        async with connect(address) as c:  # room again
            assert await c.request("ping") == "pong"


async def test_message_size_limit_at_the_edge() -> None:
    server = Server(max_message_size=1000)
    server.hook_request("echo", lambda s: len(s))
    async with serving(server) as (address,), raw_connect(address) as peer:
        at_limit = '{"jsonrpc":"2.0","method":"echo","params":["%s"],"id":1}'
        text = at_limit % ("x" * (1000 - len(at_limit % "")))
        assert len(text) == 1000
        await peer.send(text)
        assert (await peer.receive())["result"] == 1000 - len(at_limit % "")
        await peer.send(text.replace('"x', '"xx'))  # one byte over
        answer = await peer.receive()
        assert answer["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE and answer["id"] is None
        await peer.send('{"jsonrpc":"2.0","method":"echo","params":["ok"],"id":2}')
        assert (await peer.receive())["result"] == 2


async def test_batch_size_limit_at_the_edge() -> None:
    server = Server(max_batch_size=3)
    server.hook_request("one", lambda: 1)
    async with serving(server) as (address,), raw_connect(address) as peer:
        batch = [{"jsonrpc": "2.0", "method": "one", "id": i} for i in range(3)]
        await peer.send(batch)
        assert sorted(a["id"] for a in await peer.receive()) == [0, 1, 2]
        await peer.send([*batch, {"jsonrpc": "2.0", "method": "one", "id": 3}])
        answer = await peer.receive()
        assert answer["error"]["code"] == ErrorCode.BATCH_TOO_LARGE
        await peer.send(batch[:1])
        assert (await peer.receive())[0]["result"] == 1


async def test_idle_connections_are_closed() -> None:
    server = Server(idle_timeout=0.2)
    server.hook_request("ping", lambda: "pong")
    async with serving(server) as (address,), raw_connect(address) as peer:
        await peer.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
        assert (await peer.receive())["result"] == "pong"
        with anyio.fail_after(3):
            assert await peer.receive_eof() == b""


async def test_a_busy_connection_is_not_idle() -> None:
    server = Server(idle_timeout=0.1)

    @server.method
    async def slow() -> str:
        await anyio.sleep(0.4)
        return "done"

    async with serving(server) as (address,), connect(address) as remote:
        assert await remote.request("slow") == "done"


async def test_slow_senders_are_cut_off() -> None:
    server = Server(message_timeout=0.2)
    server.hook_request("ping", lambda: "pong")
    async with serving(server) as (address,), raw_connect(address) as peer:
        await peer.stream.send(b'{"jsonrpc":"2.0","method":')  # ...and never the rest
        with anyio.fail_after(3):
            assert await peer.receive_eof() == b""


async def test_a_peer_that_never_reads_does_not_grow_our_buffer() -> None:
    server = Server(write_buffer_size=64 * 1024)
    server.hook_request("blob", lambda: "x" * 10_000)
    async with serving(server) as (address,), raw_connect(address) as peer:
        request = b'{"jsonrpc":"2.0","method":"blob","id":1}\n'
        # Keep asking, never read. The server stops reading us once its queue is full.
        sent = 0
        with anyio.move_on_after(2):
            while True:
                await peer.stream.send(request * 100)
                sent += 100
        (remote,) = server.remotes
        assert remote._session.output_size <= 64 * 1024 + 10_100  # bounded: the limit and one answer
        # The server stopped reading: most of what we sent waits unread in the kernel.
        assert remote.stats.messages_in < sent / 2


async def test_shared_secret_authentication() -> None:
    server = Server(auth_token="s3cret")
    connected: list[Remote] = []
    server.hook_connect(connected.append)
    server.hook_request("ping", lambda: "pong")
    async with serving(server) as (address,):
        async with connect(address, auth_token="s3cret") as remote:
            assert await remote.request("ping") == "pong"
        assert len(connected) == 1  # the connect hook ran once authenticated
        with pytest.raises(RemoteError) as info:
            async with connect(address, auth_token="wrong"):
                pass
        assert info.value.code == ErrorCode.UNAUTHORIZED
        # No token at all: the first request is refused and the connection closed.
        async with raw_connect(address) as peer:
            await peer.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
            answer = await peer.receive()
            assert answer["error"]["code"] == ErrorCode.UNAUTHORIZED
            assert await peer.receive_eof() == b""
        # A notification first is refused the same way, silently.
        async with raw_connect(address) as peer:
            await peer.send({"jsonrpc": "2.0", "method": "ping"})
            assert await peer.receive_eof() == b""
        assert len(connected) == 1


async def test_a_peer_that_closes_its_sending_side_still_gets_its_answers() -> None:
    server = Server()

    @server.method
    async def slow(x: int) -> int:
        await anyio.sleep(0.1)
        return x * 2

    server.hook_request("quick", lambda x: x + 1)
    async with serving(server) as (address,), raw_connect(address) as peer:
        await peer.send({"jsonrpc": "2.0", "method": "slow", "params": [21], "id": 1})
        await peer.send({"jsonrpc": "2.0", "method": "quick", "params": [1], "id": 2})
        await peer.stream.send_eof()  # half-close: we still read
        rest = await peer.receive_eof()
    answers = sorted((json.loads(line) for line in rest.splitlines()), key=lambda a: a["id"])
    assert answers == [{"jsonrpc": "2.0", "id": 1, "result": 42}, {"jsonrpc": "2.0", "id": 2, "result": 2}]


async def test_a_connection_that_fails_inside_does_not_stop_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each connection runs in the server's task group; whatever escaped one ended
    serve() and every other connection (as a TLS peer's early reset once did). Now it is
    logged and that connection alone ends."""
    from ezipc_adapters import _async_io

    broken = [False]
    for wire in (_async_io.StreamWire, _async_io.ProtocolWire):  # (trio's, asyncio's)
        start = wire.start

        def failing_start(self: Any, remote: Remote, tg: Any, start: Any = start) -> None:
            if broken[0] and remote.server is not None:
                broken[0] = False
                raise RuntimeError("a bug in one connection")
            start(self, remote, tg)

        monkeypatch.setattr(wire, "start", failing_start)
    server = Server()
    server.hook_request("sum", lambda *xs: sum(xs))
    async with serving(server) as (address,):
        async with connect(address) as other:  # one that works, before the broken one
            assert await other.request("sum", [1, 2]) == 3
            broken[0] = True
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                async with connect(address) as remote:
                    await remote.request("sum", [1, 2])
            assert not broken[0]
            assert await other.request("sum", [3, 4]) == 7  # still connected
        async with connect(address) as remote:  # and still serving
            assert await remote.request("sum", [5, 6]) == 11
    assert "a bug in one connection" in caplog.text and "failed" in caplog.text


@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_connection_cancelled_from_outside_logs_no_handler_as_failed(
    side: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve()`` or a ``connect`` block cancelled from outside (abruptly) while one of
    its handlers runs: the handler is interrupted with its connection, and the other side
    gets ``ConnectionClosed``. Nothing says the handler raised: it was logged as failing
    with ``RequestCancelled: interrupted``, traceback and all."""
    started = anyio.Event()

    async def slow() -> None:
        started.set()
        await anyio.sleep(10)

    server = Server()
    client = Client()
    if side == "server":
        server.hook_request("slow", slow)
    else:
        client.hook_request("slow", slow)

        @server.hook_request("ask")
        async def ask(remote: Remote) -> Any:
            return await remote.request("slow")

    scope = anyio.CancelScope()  # what is cancelled from outside
    async with anyio.create_task_group() as tg:
        if side == "server":

            async def run_server(*, task_status: Any) -> None:
                with scope:
                    await server.serve("tcp://127.0.0.1:0", task_status=task_status)

            (address,) = await tg.start(run_server)
            async with connect(address) as remote:
                outcome: list[Any] = []

                async def call() -> None:
                    try:
                        await remote.request("slow")
                    except ConnectionClosed as exc:
                        outcome.append(exc)

                async with anyio.create_task_group() as calls:
                    calls.start_soon(call)
                    with anyio.fail_after(5):
                        await started.wait()
                    scope.cancel()
                assert [type(exc) for exc in outcome] == [ConnectionClosed]
        else:
            async with serving(server) as (address,):
                async def run_client() -> None:
                    with scope:
                        async with client.connect(address) as remote:
                            await remote.request("ask")

                with anyio.fail_after(5):
                    tg.start_soon(run_client)
                    await started.wait()
                    scope.cancel()
    # (the server's "ask" may fail with the ConnectionClosed its call got: that is its own)
    assert "'slow' raised" not in caplog.text and "RequestCancelled" not in caplog.text, caplog.text
