"""ezipc's blocking adapter (threads, stdlib codec), roundtrip only: compare with
floor_blocking and python-lsp-jsonrpc. The client submits through ``Remote.submit``."""

from __future__ import annotations

NAME = "ezipc(blocking)"
RT_TRANSPORT = "tcp"
DECODE_NA = ENCODE_NA = "same core as the ezipc row"


def rt_serve(port: int) -> None:
    from driver import handle

    from ezipc_adapters.blocking import Server

    server = Server(framing="ndjson")
    server.hook_request("add", lambda a, b: handle("add", {"a": a, "b": b}))
    server.hook_request("echo", lambda s: handle("echo", {"s": s}))
    server.serve_forever(f"tcp://127.0.0.1:{port}")


def rt_client(port: int, plan: dict) -> list[dict]:
    from driver import drive_futures

    from ezipc_adapters.blocking import connect

    with connect(f"tcp://127.0.0.1:{port}") as remote:
        return drive_futures(remote.submit, plan)
