"""A trio-native service and its client: ``trio.run``, a nursery, ``await server.serve(...)``.

    python examples/trio_service.py                   # server and client in one process
    python examples/trio_service.py serve [ADDRESS]   # only the server, until Ctrl-C
    python examples/trio_service.py client [ADDRESS]  # only the client

ADDRESS defaults to $EZIPC_ADDRESS or tcp://127.0.0.1:9002. The service has three
methods: ``add``; ``countdown``, which sends its caller ``tick`` notifications while it
runs; and ``slow``, which the client abandons with a trio cancel scope: ezipc then tells
the server (``$/cancelRequest``) and the server cancels the handler. ``stats`` shows it
did. The server runs in a nursery beside a task of your own (here: a signal watcher that
shuts it down gracefully on Ctrl-C or SIGTERM).
"""

import os
import signal
import sys

import trio

from ezipc_adapters.trio import Client, Remote, Server

ADDRESS = os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")

# ---- the service ----------------------------------------------------------------------

server = Server()
counters = {"slow started": 0, "slow cancelled": 0}


@server.method  # registered under its own name, "add"
def add(a: float, b: float) -> float:
    return a + b


@server.method
async def countdown(n: int, remote: Remote) -> str:
    """Notify the caller ``tick`` n times, then answer."""
    for i in range(n, 0, -1):
        await remote.notify("tick", [i])
        await trio.sleep(0.05)
    return "liftoff"


@server.method
async def slow(seconds: float) -> str:
    counters["slow started"] += 1
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:  # the client gave up: ezipc cancels this handler
        counters["slow cancelled"] += 1
        print("server: slow was cancelled by its caller", flush=True)
        raise
    return "done"


@server.method
def stats() -> dict[str, int]:
    return dict(counters)


async def stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("server: shutting down", flush=True)
            server.shutdown()  # graceful: serve() returns once connections are done
            return


async def serve(address: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        bound = await nursery.start(server.serve, address)  # returns once listening
        print(f"server: listening on {', '.join(bound)}", flush=True)
    # The nursery ends when both tasks have: the signal watcher after calling
    # shutdown(), serve() once every connection has been closed gracefully.
    print("server: stopped", flush=True)


# ---- the client -------------------------------------------------------------------------


async def client(address: str) -> None:
    me = Client()
    me.hook_notif("tick", lambda i: print(f"client: tick {i}", flush=True))
    async with me.connect(address, timeout=5) as remote:
        # Three requests at once, from three tasks of a nursery.
        results: dict[int, float] = {}

        async def add_one(i: int) -> None:
            results[i] = await remote.request("add", [i, 0.5])

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(add_one, i)
        print(f"client: add -> {[results[i] for i in range(3)]}", flush=True)

        print(f"client: countdown -> {await remote.request('countdown', [3])}", flush=True)

        with trio.move_on_after(0.2) as scope:  # give up on slow after 0.2 s
            await remote.request("slow", [30])
        print(f"client: gave up on slow: {scope.cancelled_caught}", flush=True)
        await trio.sleep(0.1)  # the cancellation reaches the server meanwhile
        print(f"client: stats -> {await remote.request('stats')}", flush=True)


async def both() -> None:
    """Server and client in one process: the server on a free port, shut down after."""
    async with trio.open_nursery() as nursery:
        [address, *_] = await nursery.start(server.serve, "tcp://127.0.0.1:0")
        print(f"server: listening on {address}", flush=True)
        await client(address)
        server.shutdown()
    print("server: stopped", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "both"
    address = sys.argv[2] if len(sys.argv) > 2 else ADDRESS
    if mode == "serve":
        trio.run(serve, address)
    elif mode == "client":
        trio.run(client, address)
    elif mode == "both":
        trio.run(both)
    else:
        sys.exit(__doc__)
