"""What ``mypy --strict`` sees of the public API (checked by tests/test_typing.py, never
run): every type a newcomer's editor shows is the precise one."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from mypy_extensions import VarArg
from typing_extensions import assert_type

import ezipc_adapters.blocking as blocking
from ezipc_adapters import BatchCall, Call, Client, Remote, Sent, Server, connect, connect_subprocess
from ezipc_proto import (
    NEED_DATA,
    PAUSED,
    Connection,
    Event,
    NeedData,
    Paused,
    Request,
    Session,
    SessionEvent,
    Settle,
)


async def the_async_adapter() -> None:
    async with connect("tcp://127.0.0.1:9002") as remote:
        assert_type(remote, Remote)
        call = remote.request("subtract", [42, 23], timeout=5)
        assert_type(call, Call)
        assert_type(await call, Any)
        assert_type(await remote.request("subtract", {"minuend": 42, "subtrahend": 23}), Any)
        assert_type(remote.notify("update", [1, 2, 3]), Sent)
        await remote.notify("update")
        assert_type(remote.batch([("sum", [1, 2])]), BatchCall)
        assert_type(await remote.batch([("sum", [1, 2])]), list[Any])
    async with connect_subprocess(["prog"], framing="content-length") as child:
        assert_type(child, Remote)
    async with Client().connect("unix:/tmp/app.sock") as hooked:
        assert_type(hooked, Remote)


def the_registry() -> None:
    server = Server()

    @server.method
    def subtract(minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    assert_type(subtract(42, 23), int)  # (the decorator keeps the function's type)

    def total(*xs: int) -> int:
        return sum(xs)

    assert_type(server.hook_request("sum", total), Callable[[VarArg(int)], int])

    @server.hook_notif("log")
    async def log(text: str) -> None:
        pass

    pending = log("hello")
    check: Coroutine[Any, Any, None] = assert_type(pending, Coroutine[Any, Any, None])
    check.close()


def the_blocking_adapter() -> None:
    with blocking.connect("tcp://127.0.0.1:9002") as remote:
        assert_type(remote, blocking.Remote)
        assert_type(remote.request("subtract", [42, 23]), Any)
        assert_type(remote.submit("subtract", [42, 23]), Future[Any])
        assert_type(remote.notify("update"), None)
        assert_type(remote.batch([("sum", [1, 2])]), list[Any])


def the_core() -> None:
    conn = Connection(framing="ndjson")
    event = conn.next_event()
    assert_type(event, Event | NeedData)
    if event is not NEED_DATA:
        assert_type(event, Event)
    assert_type(conn.send(Request("m", None, conn.next_id())), bytes)
    session = Session("content-length", now=0.0)
    step = session.next_event()
    assert_type(step, SessionEvent | NeedData | Paused)
    if step is not NEED_DATA and step is not PAUSED and isinstance(step, Settle):
        assert_type(step.error, BaseException | None)
