"""A chat server: every message a client says is relayed to every connected client.

How it works, on ezipc's side:

* ``hook_connect``: when a client connects, the server asks it for its name with a
  server->client request (``chat/name``; the client answers it with a hook of its own),
  then announces ``chat/joined`` to everyone with ``server.broadcast``. A client that does
  not answer within 5 seconds is refused: a connect hook that raises closes the connection.
* ``say`` (a request): relays ``chat/message`` to everyone, the sender included, and
  answers how many clients it reached.
* ``who`` (a request): the names of the connected clients.
* ``hook_disconnect``: announces ``chat/left`` when a client goes, however it goes.

Per-connection state lives in ``remote.data``; a handler gets the calling ``Remote`` by
declaring a parameter named ``remote``.

    python examples/chat_server.py                         # tcp://127.0.0.1:9002
    python examples/chat_server.py tcp://127.0.0.1:9010    # or EZIPC_ADDRESS=...

Then run examples/chat_client.py in two or more terminals. Ctrl-C stops the server.
"""

import os
import sys

from ezipc_adapters import Remote, Server

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")

server = Server()


@server.hook_connect
async def joined(remote: Remote) -> None:
    name = await remote.request("chat/name", timeout=5)  # the client's own hook answers
    remote.data["name"] = name = str(name)[:32] or "anonymous"
    print(f"{name} joined from {remote.remote_address}", flush=True)
    await server.broadcast("chat/joined", {"name": name})


@server.hook_disconnect
async def left(remote: Remote) -> None:
    name = remote.data.get("name")
    if name is not None:  # None: it never got as far as telling its name
        print(f"{name} left", flush=True)
        await server.broadcast("chat/left", {"name": name})


@server.hook_request("say")
async def say(text: str, remote: Remote) -> int:
    """Relay ``text`` to every client; answer how many were reached."""
    name = remote.data["name"]
    print(f"<{name}> {text}", flush=True)
    await server.broadcast("chat/message", {"from": name, "text": text})
    return len(server.remotes)


@server.hook_request("who")
def who() -> list[str]:
    return sorted(r.data["name"] for r in server.remotes if "name" in r.data)


if __name__ == "__main__":
    print(f"chat server on {ADDRESS} (Ctrl-C to stop)", flush=True)
    server.start(ADDRESS)
    print("chat server stopped", flush=True)
