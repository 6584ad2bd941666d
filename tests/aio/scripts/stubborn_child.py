"""A child that ignores stdin EOF (and, with ``--ignore-term``, SIGTERM).

It tells its parent it is ready with a JSON-RPC notification on stdout, then sleeps.
"""

from __future__ import annotations

import signal
import sys
import time

if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.write('{"jsonrpc": "2.0", "method": "ready"}\n')
sys.stdout.flush()
time.sleep(120)
