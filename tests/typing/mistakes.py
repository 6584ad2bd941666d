"""Mistakes newcomers make, which ``mypy --strict`` must catch (tests/test_typing.py
checks that each line marked ``# error`` is reported, and no other)."""

from __future__ import annotations

from ezipc_adapters import connect


async def forgot_async_with() -> None:
    remote = connect("tcp://127.0.0.1:9002")
    await remote.request("m")  # error: a context manager, not a Remote


async def awaited_connect() -> None:
    remote = await connect("tcp://127.0.0.1:9002")  # error: not awaitable  # noqa: F841


async def plain_with() -> None:
    with connect("tcp://127.0.0.1:9002") as remote:  # error: needs async with
        await remote.request("m")
