"""What a newcomer trips on, each answered: one call shape, misuse that says what to do,
errors that name their address, and one fresh exception per failed call."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import ezipc_adapters.blocking as blocking
from ezipc_adapters import ConnectError, ConnectionClosed, Server, connect

from .conftest import new_server, raw_server, serving

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- one rule for request, notify and batch ---------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_calls_go_straight_to_a_task_group(backend: str) -> None:
    """request, notify and batch send at once and are coroutine objects: start_soon takes
    them as they are (trio's nursery too)."""
    server = new_server(backend)
    server.hook_request("add", lambda a, b: a + b)
    notes: list[Any] = []
    server.hook_notif("note", notes.append)

    async def main(address: str) -> list[Any]:
        async with connect(address) as remote:
            results: list[Any] = []

            async def keep(call: Any) -> None:
                results.append(await call)

            async with anyio.create_task_group() as tg:
                tg.start_soon(remote.request, "add", [1, 2])  # (the result is dropped)
                tg.start_soon(keep, remote.request("add", [2, 3]))
                tg.start_soon(remote.notify, "note", [7])
                tg.start_soon(keep, remote.batch([("add", [3, 4])]))
            if backend == "trio":
                import trio

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(remote.request, "add", [5, 6])
            remote.notify("note", [8])  # not awaited: sent all the same
            assert await remote.request("add", [0, 0]) == 0  # (after the notification)
            return results

    with serving(backend, server) as served:
        results = anyio.run(main, served.address, backend=backend)
    assert sorted(map(str, results)) == ["5", "[7]"]
    assert notes == [7, 8]


def test_connect_misused_says_how_to_use_it() -> None:
    async def main() -> None:
        connecting = connect("tcp://127.0.0.1:9")
        with pytest.raises(AttributeError, match=r"use `async with connect\(\.\.\.\) as remote:`"):
            connecting.request("m")  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match=r"is not awaited: use `async with"):
            await connecting  # type: ignore[misc]
        with pytest.raises(TypeError, match=r"needs `async with`, not `with`"):
            with connecting:  # type: ignore[attr-defined]
                pass

    anyio.run(main)


def test_start_inside_an_event_loop_says_to_use_serve() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"use `await server.serve\(\.\.\.\)` inside an event loop"):
            Server().start("tcp://127.0.0.1:0")

    asyncio.run(main())


def test_a_failed_call_nobody_awaited_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ezipc")
    server = new_server("asyncio")

    async def main(address: str) -> None:
        async with connect(address) as remote:
            remote.request("nope")  # fails (-32601), and nobody looks
            await anyio.sleep(0.3)

    with serving("asyncio", server) as served:
        anyio.run(main, served.address)
    import gc

    gc.collect()
    assert any("request 'nope' failed and nobody awaited it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_awaited_batch_that_fails_logs_none_of_its_calls(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """Awaiting a batch looks at every call in it: when the connection closes before the
    answer, the await raises, and no call is later logged as failed with nobody awaiting
    it (``ezipc call --batch`` printed such a line after its own error)."""
    caplog.set_level(logging.WARNING, logger="ezipc")

    async def main(address: str) -> None:
        async with connect(address) as remote:
            batch = remote.batch([("add", [1, 2]), ("add", [3, 4]), ("add", [5, 6])])
            with pytest.raises(ConnectionClosed):
                await batch
            assert all(call.done() for call in batch.calls)

    with raw_server() as (address, accept):
        received: list[Any] = []

        def peer() -> None:  # reads the batch and hangs up
            server = accept()
            received.append(server.receive())
            server.close()

        thread = threading.Thread(target=peer)
        thread.start()
        anyio.run(main, address, backend=backend)
        thread.join(5)
    assert [item["method"] for item in received[0]] == ["add", "add", "add"]  # the batch arrived
    import gc

    gc.collect()
    assert not [r.getMessage() for r in caplog.records if "nobody awaited" in r.getMessage()]


# ---- errors that name the problem -------------------------------------------------------


@pytest.mark.parametrize("kind", ["asyncio", "trio", "blocking"])
def test_a_port_in_use_is_one_oserror_naming_the_address(kind: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        server = new_server(kind)
        if kind == "blocking":
            with pytest.raises(OSError, match=f"cannot listen on {address}: .*in use"):
                server.serve_forever(address)
        else:
            with pytest.raises(OSError, match=f"cannot listen on {address}: .*in use") as info:
                server.start(address)  # one OSError, not an exception group
            assert type(info.value) is OSError or isinstance(info.value, OSError)

            async def serve() -> None:
                await server.serve(address)

            with pytest.raises(OSError, match=f"cannot listen on {address}"):
                anyio.run(serve, backend=kind)


@pytest.mark.parametrize("kind", ["asyncio", "trio", "blocking"])
def test_a_connection_that_cannot_be_made_names_its_address(kind: str, tmp_path: Path) -> None:
    for address, why in ((f"tcp://127.0.0.1:{_closed_port()}", "refused"),
                         (f"unix:{tmp_path / 'nobody.sock'}", "No such file")):
        with pytest.raises(ConnectError, match=f"cannot connect to {address}: .*{why}") as info:
            if kind == "blocking":
                blocking.connect(address)
            else:

                async def main(address: str) -> None:
                    async with connect(address):
                        pass

                anyio.run(main, address, backend=kind)
        assert isinstance(info.value, ConnectionError) and info.value.address == address
        assert info.value.__cause__ is not None


# ---- one fresh exception per failed call ------------------------------------------------


def test_each_call_failed_by_a_disconnect_gets_its_own_exception(caplog: pytest.LogCaptureFixture) -> None:
    """Six calls failed by one disconnect, each logged with its traceback: six exception
    objects, and six tracebacks of the same size (a shared one grew with each raise)."""
    caplog.set_level(logging.ERROR)
    errors: list[BaseException] = []
    with raw_server() as (address, accept), blocking.connect(address) as remote:
        peer = accept()

        def call() -> None:
            try:
                remote.request("slow")
            except ConnectionClosed as exc:
                errors.append(exc)
                logging.getLogger("test").error("call failed", exc_info=exc)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for _ in range(6):
            peer.receive()
        peer.close()
        for t in threads:
            t.join(10)
    assert len(errors) == 6 and len({id(e) for e in errors}) == 6
    sizes = {len(r.exc_text or "") for r in caplog.records if r.name == "test"}
    lines = [(r.exc_text or "").count("\n") for r in caplog.records if r.name == "test"]
    assert len(lines) == 6 and max(lines) <= min(lines) + 2, (lines, sizes)
