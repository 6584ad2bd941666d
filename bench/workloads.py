"""Deterministic JSON-RPC 2.0 workloads (seeded) and the floor's framers.

A self-contained copy of the shared harness's generator (``../shared/bench/workloads.py``
and the framers of its ``common.py``): same seed, same messages, same bytes, so numbers
from ``bench/core.py`` and from the shared harness describe the same stream.

    mixed_messages(n)   n top-level frames (dicts; 2% are batches = lists of dicts)
    frame(msgs, f)      concatenated wire bytes, f in FRAMINGS ("ndjson" | "lsp")
    large_message(size) one didOpen-style notification whose compact JSON is `size` bytes
    chunked(data, k)    the bytes split into k-byte chunks (how a socket would deliver them)
    FRAMERS[f](chunks)  the floor's framers: yield each message body, no checks
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from typing import Any

FRAMINGS = ("ndjson", "lsp")
SEED = 20240611

_WORDS = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
    "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
)
_METHODS_POS = ("add", "subtract", "multiply", "$/setTrace")
_METHODS_NAMED = ("textDocument/hover", "textDocument/definition", "tools/call", "workspace/symbol")


def dumps(obj: Any) -> bytes:
    """Compact JSON, as most peers put it on the wire (JSON.stringify style)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _named_params(r: random.Random) -> dict[str, Any]:
    return {
        "textDocument": {"uri": f"file:///src/{r.choice(_WORDS)}/{r.choice(_WORDS)}.py"},
        "position": {"line": r.randrange(5000), "character": r.randrange(120)},
    }


def _result(r: random.Random) -> dict[str, Any]:
    # ~200 bytes of compact JSON
    text = " ".join(r.choice(_WORDS) for _ in range(14))
    ln = r.randrange(5000)
    return {
        "contents": {"kind": "markdown", "value": text},
        "range": {
            "start": {"line": ln, "character": r.randrange(80)},
            "end": {"line": ln, "character": r.randrange(80, 120)},
        },
        "detail": r.choice(_WORDS),
    }


def _one(r: random.Random, i: int, allow_response: bool = True) -> dict[str, Any]:
    mid: int | str = i if r.random() < 0.9 else f"req-{i}"
    k = r.random()
    if not allow_response:
        k = k * 0.60
    if k < 0.25:  # request, small positional params
        return {
            "jsonrpc": "2.0", "id": mid, "method": r.choice(_METHODS_POS),
            "params": [r.randrange(1000), r.randrange(1000)],
        }
    if k < 0.45:  # request, small named params
        return {"jsonrpc": "2.0", "id": mid, "method": r.choice(_METHODS_NAMED), "params": _named_params(r)}
    if k < 0.60:  # notification
        return {
            "jsonrpc": "2.0", "method": "$/progress",
            "params": {"token": f"tok-{r.randrange(100)}",
                       "value": {"kind": "report", "percentage": r.randrange(101)}},
        }
    if k < 0.92:  # success response, ~200-byte result
        return {"jsonrpc": "2.0", "id": mid, "result": _result(r)}
    return {  # error response
        "jsonrpc": "2.0", "id": mid,
        "error": {
            "code": r.choice((-32601, -32602, -32603, -32000)),
            "message": r.choice(("Method not found", "Invalid params", "Internal error")),
            "data": {"detail": r.choice(_WORDS)},
        },
    }


def mixed_messages(n: int, seed: int = SEED) -> list[Any]:
    """n top-level frames: requests (positional/named), notifications, responses,
    error responses, and 2% batches of 2-5 requests/notifications."""
    r = random.Random(seed)
    out: list[Any] = []
    for i in range(n):
        if r.random() < 0.02:
            out.append([_one(r, i * 10 + j, allow_response=False) for j in range(r.randint(2, 5))])
        else:
            out.append(_one(r, i))
    return out


def frame_one(body: bytes, framing: str) -> bytes:
    if framing == "ndjson":
        return body + b"\n"
    if framing == "lsp":
        return b"Content-Length: %d\r\n\r\n" % len(body) + body
    raise ValueError(framing)


def frame(msgs: Iterable[Any], framing: str) -> bytes:
    return b"".join(frame_one(dumps(m), framing) for m in msgs)


def large_message(size: int, seed: int = SEED) -> dict[str, Any]:
    """An LSP didOpen-style notification with one big text field (escapes included),
    padded so that dumps(msg) is exactly `size` bytes."""
    r = random.Random(seed)
    base: list[str] = []
    while sum(map(len, base)) < 4096:
        w = r.choice(_WORDS)
        base.append(w + r.choice((" ", " ", " ", "\n", "\t", ' "q" ', "\\")))
    base_enc = json.dumps("".join(base))[1:-1]  # JSON-escaped text, no quotes
    doc: dict[str, Any] = {"uri": "file:///big.txt", "languageId": "plaintext", "version": 1, "text": ""}
    shell = {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": doc}}
    room = size - len(dumps(shell))
    if room < 0:
        raise ValueError("size too small")
    enc = base_enc * (room // len(base_enc))
    enc += "x" * (room - len(enc))
    doc["text"] = json.loads('"' + enc + '"')
    assert len(dumps(shell)) == size, (len(dumps(shell)), size)
    return shell


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# ---- the floor's framers: the simplest linear-time code (bytearray + find, no rescans) ----


def ndjson_frames(chunks: Iterable[bytes]) -> Iterator[bytearray]:
    """Yield each line (without b'\\n'), from an iterable of chunks."""
    buf = bytearray()
    for chunk in chunks:
        scan = len(buf)  # old remainder holds no newline: never rescan it
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", scan)) >= 0:
            yield buf[start:nl]
            start = scan = nl + 1
        if start:
            del buf[:start]


def _content_length(header: bytes | bytearray) -> int:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("no Content-Length header")


def lsp_frames(chunks: Iterable[bytes]) -> Iterator[bytearray]:
    """Yield each body for `Content-Length: N\\r\\n\\r\\n` framing."""
    buf = bytearray()
    need = -1
    start = 0
    for chunk in chunks:
        buf += chunk
        while True:
            if need < 0:
                h = buf.find(b"\r\n\r\n", start)
                if h < 0:
                    break
                if buf.startswith(b"Content-Length: ", start) and buf.find(b"\r\n", start, h) < 0:
                    need = int(buf[start + 16 : h])  # the usual single-header case
                else:
                    need = _content_length(buf[start:h])
                start = h + 4
            if len(buf) - start < need:
                break
            yield buf[start : start + need]
            start += need
            need = -1
        if start:
            del buf[:start]
            start = 0


FRAMERS = {"ndjson": ndjson_frames, "lsp": lsp_frames}
