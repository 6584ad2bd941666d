"""A client of examples/chat_server.py.

    python examples/chat_client.py alice                    # chat: type lines, Ctrl-D to leave
    python examples/chat_client.py bob "hi all" "bye"       # say these, then leave
    EZIPC_ADDRESS=tcp://127.0.0.1:9010 python examples/chat_client.py carol

The server asks the client for its name (``chat/name``), so the client answers that
request with a hook, and prints the notifications the server relays: ``chat/joined``,
``chat/message`` and ``chat/left``.
"""

import asyncio
import os
import sys
import threading

from ezipc_adapters import Client

ADDRESS = os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")


def make_client(name: str) -> Client:
    client = Client()  # NDJSON framing, like the server's "auto" will detect

    @client.hook_request("chat/name")  # the server asks this as we connect
    def my_name() -> str:
        return name

    # Notifications from the server, printed as they come (one at a time, in order).
    client.hook_notif("chat/joined", lambda name: print(f"* {name} joined", flush=True))
    client.hook_notif("chat/left", lambda name: print(f"* {name} left", flush=True))
    client.hook_notif("chat/message", lambda text, **who: print(f"<{who['from']}> {text}", flush=True))
    return client


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """Lines typed on stdin, read by a daemon thread (None at end of input)."""
    queue: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return queue


async def main(name: str, messages: list[str]) -> None:
    async with make_client(name).connect(ADDRESS, timeout=5) as remote:
        print(f"connected to {ADDRESS} as {name}; here now: {await remote.request('who')}", flush=True)
        if messages:  # say each, then leave
            for text in messages:
                reached = await remote.request("say", [text], timeout=5)
                print(f"(reached {reached} clients)", flush=True)
            return
        lines = stdin_lines(asyncio.get_running_loop())
        while (text := await lines.get()) is not None:
            if text:
                await remote.request("say", [text], timeout=5)
    print("left the chat", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2:]))
    except KeyboardInterrupt:
        pass
