"""Handlers that raise, hang, or return what JSON cannot encode: the right error answers
(-32603 with nothing of ours in them), the connection stays usable, hanging handlers are
cancelled when their client goes, and nothing is left behind."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from ezipc_adapters import ConnectionClosed, ErrorCode, RemoteError, connect

from .conftest import App, LogCounter, harness, raw_connect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = "secret-/etc/passwd-0xdeadbeef"


class Unlistable(dict):  # type: ignore[type-arg]
    """A dict whose items() fails: the encoder calls it, so it raises from inside the codec."""

    def items(self) -> Any:
        raise RuntimeError(SECRET)


class Opaque:
    def __repr__(self) -> str:
        return SECRET


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


#: name -> a function of no arguments giving what the handler returns (or raising).
BAD_RESULTS: dict[str, Any] = {
    "nan": lambda: float("nan"),
    "inf": lambda: [1.0, float("-inf")],
    "object": Opaque,
    "set": lambda: {1, 2, 3},
    "bytes": lambda: SECRET.encode("utf-8"),
    "tuple_keys": lambda: {(1, 2): SECRET},
    "circular": _circular,
    "too_deep": lambda: _deep(100_000),
    "items_raise": lambda: Unlistable(a=1),
    "big_int": lambda: 10**5000,  # more digits than int -> str allows
}


def _raise() -> None:
    raise ValueError(SECRET)


def _raise_remote_error_with_bad_data() -> None:
    raise RemoteError(-32099, "refused", Opaque())


#: After a client's EOF, its running handlers may finish within this many seconds (the
#: peer may have only half-closed); a hanging one is cancelled then.
GRACE = 0.3


def _async_version(make: Any) -> Any:
    async def handler() -> Any:
        await anyio.sleep(0)
        return make()

    return handler


def make_app() -> App:
    app = App(shutdown_timeout=GRACE)
    server = app.server
    for name, make in BAD_RESULTS.items():
        server.hook_request(f"sync_{name}", make)
        server.hook_request(f"async_{name}", _async_version(make))
    server.hook_request("sync_raise", _raise)

    @server.method
    async def async_raise() -> None:
        await anyio.sleep(0)
        raise ValueError(SECRET)

    server.hook_request("bad_error_data", _raise_remote_error_with_bad_data)

    @server.method
    def refuse() -> None:
        raise RemoteError(-32099, "refused", {"why": "policy"})

    @server.hook_notif
    def note_raise() -> None:
        raise ValueError(SECRET)

    @server.hook_notif
    async def note_async_raise() -> None:
        await anyio.sleep(0)
        raise KeyError(SECRET)

    return app


INTERNAL = {"code": ErrorCode.INTERNAL_ERROR}


async def _bad_outcomes(address: str, framing: str) -> int:
    """Every bad outcome, on one raw connection; each answer checked to the byte's meaning."""
    checked = 0
    async with raw_connect(address, framing) as peer:
        methods = [f"{kind}_{name}" for name in BAD_RESULTS for kind in ("sync", "async")]
        methods += ["sync_raise", "async_raise", "bad_error_data"]
        for i, method in enumerate(methods):
            await peer.send({"jsonrpc": "2.0", "method": method, "id": i})
            try:
                answer = await peer.receive()
            except anyio.EndOfStream:
                raise AssertionError(f"{method}: the server closed the connection") from None
            assert SECRET not in json.dumps(answer)  # nothing of ours leaks
            assert answer == {
                "jsonrpc": "2.0",
                "id": i,
                "error": {"code": ErrorCode.INTERNAL_ERROR, "message": answer["error"]["message"]},
            }, (method, answer)
            checked += 1
            # Notifications whose handlers raise: nothing is answered, nothing breaks.
            await peer.send({"jsonrpc": "2.0", "method": "note_raise"})
            await peer.send({"jsonrpc": "2.0", "method": "note_async_raise"})
        # A handler's own error code and data go through as they are.
        await peer.send({"jsonrpc": "2.0", "method": "refuse", "id": "r"})
        assert await peer.receive() == {
            "jsonrpc": "2.0",
            "id": "r",
            "error": {"code": -32099, "message": "refused", "data": {"why": "policy"}},
        }
        # In a batch, each member gets its own answer and the good ones their results.
        batch = [
            {"jsonrpc": "2.0", "method": "async_nan", "id": 1},
            {"jsonrpc": "2.0", "method": "echo", "params": ["ok"], "id": 2},
            {"jsonrpc": "2.0", "method": "sync_raise", "id": 3},
            {"jsonrpc": "2.0", "method": "sync_items_raise", "id": 4},
            {"jsonrpc": "2.0", "method": "aecho", "params": [5], "id": 5},
            {"jsonrpc": "2.0", "method": "note_raise"},
        ]
        await peer.send(batch)
        answers = sorted(await peer.receive(), key=lambda a: a["id"])
        assert [a.get("result", a.get("error", {}).get("code")) for a in answers] == [
            ErrorCode.INTERNAL_ERROR,
            "ok",
            ErrorCode.INTERNAL_ERROR,
            ErrorCode.INTERNAL_ERROR,
            5,
        ]
        # The connection is still perfectly usable.
        await peer.send({"jsonrpc": "2.0", "method": "sum", "params": [2, 3], "id": "last"})
        assert await peer.receive() == {"jsonrpc": "2.0", "id": "last", "result": 5}
    return checked


async def _hangs(app: App, address: str, clients: int, per_client: int) -> None:
    """Clients that leave hanging handlers behind (plain and in batches): every one of
    them is cancelled once its client has gone (within GRACE seconds: see make_app), and
    their callers see the connection end."""
    started = app.hangs_started
    async with anyio.create_task_group() as tg:
        for _ in range(clients):

            async def one() -> None:
                async with connect(address, request_timeout=10) as remote:
                    calls = [remote.request("hang") for _ in range(per_client)]
                    async with anyio.create_task_group() as batch_tg:
                        batch_tg.start_soon(remote.batch, [("hang", None), ("echo", [1])])
                        with anyio.fail_after(5):
                            while app.hangs_started - started < 1:
                                await anyio.sleep(0.01)
                        await anyio.sleep(0.05)
                        batch_tg.cancel_scope.cancel()
                    assert not any(call.done() for call in calls)
                # Gone: the calls ended (ConnectionClosed), none is left pending.
                for call in calls:
                    assert isinstance(call.exception(), ConnectionClosed)

            tg.start_soon(one)
    with anyio.fail_after(GRACE + 4):
        while app.hangs_ended < app.hangs_started:
            await anyio.sleep(0.01)


async def test_handlers_that_raise_hang_or_return_unencodable_values(ezipc_log: LogCounter) -> None:
    app = make_app()

    async def round(clients: int) -> int:
        checked = 0
        for framing in ("ndjson", "content-length"):
            checked += await _bad_outcomes(h.address, framing)
        await _hangs(app, h.address, clients, 10)
        return checked

    async with harness(app) as h:
        await round(2)
        await h.baseline()
        errors_before = ezipc_log.total("ERROR")
        with anyio.fail_after(30):
            checked = await round(10)
        assert app.hangs_started == app.hangs_ended
        # The details went to the log, where they belong.
        assert ezipc_log.total("ERROR") - errors_before >= checked
        await h.check(bad_outcomes=checked, hangs_cancelled=app.hangs_ended)


async def test_a_handler_raising_cancelled_by_itself(anyio_backend: str) -> None:
    """asyncio only: a handler that awaits a future someone else cancelled raises
    CancelledError, which nothing in the handler's own scope caused. anyio treats that as
    the cancellation of the connection's task group: the connection closes, its pending
    calls end with ConnectionClosed (none hangs), and the server serves on."""
    if anyio_backend != "asyncio":
        pytest.skip("trio cannot raise a Cancelled of its own")
    import asyncio

    app = App()

    @app.server.method
    async def stray_cancel() -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    async def round() -> None:
        async with connect(h.address, request_timeout=10) as remote:
            other = remote.request("slow", [5])
            with pytest.raises((ConnectionClosed, RemoteError)):
                await remote.request("stray_cancel")
            with anyio.fail_after(5):
                with pytest.raises((ConnectionClosed, RemoteError)):
                    await other

    async with harness(app) as h:
        await round()
        await h.baseline()
        for _ in range(20):
            await round()
        await h.check()
