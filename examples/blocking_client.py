"""A plain script, no event loop: ezipc's blocking adapter against the trio service.

Start the service (any ezipc server with these methods would do), then this script:

    python examples/trio_service.py serve              # in one terminal
    python examples/blocking_client.py                 # in another
    python examples/blocking_client.py tcp://127.0.0.1:9010   # or EZIPC_ADDRESS=...

It shows one ``Remote`` shared by several threads, a ``submit`` future, a request that
times out (and is cancelled on the server), error replies raised as ``RemoteError``, and
notifications from the server handled by a hook in a worker thread.
"""

import os
import sys
import threading
import time

from ezipc_adapters.blocking import Client, RemoteError

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EZIPC_ADDRESS", "tcp://127.0.0.1:9002")

client = Client()  # hooks: what the server may send us
client.hook_notif("tick", lambda i: print(f"tick {i}"))  # run by ezipc, in its own thread

try:
    remote = client.connect(ADDRESS, timeout=5)
except OSError as exc:
    sys.exit(
        f"cannot connect to {ADDRESS} ({exc}); start a server first:\n"
        "    python examples/trio_service.py serve"
    )

with remote:  # closes the connection at the end of the block
    # 1. Four threads share one Remote; each gets its own answer.
    results = {}

    def worker(i: int) -> None:
        results[i] = remote.request("add", [i, 100])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("add from 4 threads:", [results[i] for i in range(4)])

    # 2. submit() sends at once and returns a concurrent.futures.Future.
    future = remote.submit("countdown", [2])
    print("countdown:", future.result(timeout=5))

    # 3. A timeout: TimeoutError here, and the server is told to cancel the handler.
    started = time.monotonic()
    try:
        remote.request("slow", [30], timeout=0.3)
    except TimeoutError:
        print(f"slow: TimeoutError after {time.monotonic() - started:.2f} s")
    time.sleep(0.1)  # let the cancellation reach the server
    print("stats:", remote.request("stats"))

    # 4. Error replies raise RemoteError with the code, message and data.
    for method, params in [("divide", [1, 0]), ("add", [1])]:
        try:
            remote.request(method, params)
        except RemoteError as exc:
            print(f"{method}{params}: error {exc.code}: {exc.message}")
print("closed:", remote.closed)
