"""The blocking driver's I/O: one thread waiting on many descriptors with ``selectors``,
and non-blocking streams over a socket, TLS (through memory BIOs) or a pair of pipes.

The loop runs callbacks on its own thread only: descriptors that became ready, timers
that came due, and calls other threads hand it (``call_soon``, ``call_at``). Callbacks
never block: every descriptor is non-blocking."""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import selectors
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._registry import log

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["Loop", "Stream", "SocketStream", "TLSStream", "PipeStream", "monotonic"]

READ_SIZE = 65536
monotonic = time.monotonic
_Callback = Callable[[], None]

# The kernel may hand a process's signal to any of its threads (one that does not block
# it), but Python runs the handler only in the main thread, once that thread runs Python
# code again. So a caller waiting on the main thread never sleeps longer than this: a
# Ctrl-C that the I/O thread, a worker, or the thread that called os.kill took still
# interrupts its call. (A loop on the main thread is woken by the signal itself:
# ``Loop._take_signal_wakeups``.)
SIGNAL_CHECK = 0.1


# The main thread's ident, kept (a caller asks at every wait: three calls less than
# threading.main_thread().ident); a child forked from another thread has a new one.
_main_ident = threading.main_thread().ident


def _forked() -> None:
    global _main_ident
    _main_ident = threading.main_thread().ident  # (threading's own at-fork hook ran first)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def in_main_thread() -> bool:
    return threading.get_ident() == _main_ident


def signal_cap() -> float | None:
    """The longest this thread may sleep at a time: SIGNAL_CHECK on the main thread."""
    return SIGNAL_CHECK if threading.get_ident() == _main_ident else None


def capped(timeout: float | None, cap: float | None) -> float | None:
    """``timeout`` (None: none), but ``cap`` at most (None: no cap)."""
    return timeout if cap is None or (timeout is not None and timeout <= cap) else cap


def acquire(lock: threading.Lock) -> None:
    """``lock.acquire()``, waking every SIGNAL_CHECK on the main thread."""
    if lock.acquire(blocking=False):
        return  # (a caller that read its own answer finds it released)
    if not in_main_thread():
        lock.acquire()
        return
    while not lock.acquire(timeout=SIGNAL_CHECK):
        pass


class Loop:
    """One I/O thread (the one that calls :meth:`run`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, [self._drain_wakeups, None])
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._soon: list[_Callback] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._woken = False
        self._selecting = False  # the loop thread waits in select
        self._stopping = False
        self.ident = 0  # the loop thread's, while it runs

    # ---- any thread ------------------------------------------------------------------

    def call_soon(self, fn: _Callback) -> None:
        """``fn()`` on the loop thread, soon. (Also from a signal handler: the loop
        thread may be waiting in ``select`` under it, so it is always woken.)"""
        with self._lock:
            self._soon.append(fn)
            wake, self._woken = not self._woken, True
        if wake:
            self._wake()

    def call_at(self, when: float, fn: Callable[[float], None]) -> None:
        """``fn(now)`` on the loop thread once ``when`` has come."""
        # The loop's own callbacks need no wake: it looks at its timers before it waits
        # again (a reader's GRACE timer, re-armed from the loop every millisecond while
        # callers read, cost a send, a receive and a turn of the loop each time). A
        # signal handler on the loop thread, run while it waits in select, does.
        on_loop = threading.get_ident() == self.ident and not self._selecting
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), fn))
            wake = self._timers[0][2] is fn and not self._woken and not on_loop
            self._woken = self._woken or wake
        if wake:
            self._wake()

    def stop(self) -> None:
        self._stopping = True
        self.call_soon(lambda: None)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):  # full already (it will wake), or closed
            pass

    def start_thread(self) -> None:
        """Run the loop in a daemon thread of its own (the process-wide client loop)."""
        ready = threading.Event()

        def main() -> None:
            self.ident = threading.get_ident()
            ready.set()
            self.run()

        threading.Thread(target=main, name=self.name, daemon=True).start()
        ready.wait()

    def watch(
        self, fd: int, *, read: _Callback | bool | None = False, write: _Callback | bool | None = False
    ) -> bool:
        """Set what to call when ``fd`` is readable / writable (None: stop watching;
        False: leave as is). False if ``fd`` cannot be watched (a regular file). From any
        thread: the kernel lets epoll be changed while the loop waits on it."""
        with self._watch_lock:
            return self._watch(fd, read, write)

    def _watch(self, fd: int, read: _Callback | bool | None, write: _Callback | bool | None) -> bool:
        key = self._selector.get_map().get(fd)
        callbacks = list(key.data) if key is not None else [None, None]
        if read is not False:
            callbacks[0] = read
        if write is not False:
            callbacks[1] = write
        events = (selectors.EVENT_READ if callbacks[0] else 0) | (
            selectors.EVENT_WRITE if callbacks[1] else 0
        )
        try:
            if key is None:
                if events:
                    self._selector.register(fd, events, callbacks)
            elif events:
                self._selector.modify(fd, events, callbacks)
            else:
                self._selector.unregister(fd)
        except (OSError, ValueError):  # not pollable, or closed meanwhile
            return False
        return True

    # ---- the loop thread -------------------------------------------------------------

    def run(self) -> None:
        self.ident = threading.get_ident()
        select, timers = self._selector.select, self._timers
        previous = self._take_signal_wakeups()
        try:
            while not self._stopping:
                with self._lock:
                    soon, self._soon = self._soon, []
                    self._woken = False
                for fn in soon:
                    self._safely(fn)
                if self._soon:
                    timeout: float | None = 0
                else:
                    timeout = None if not timers else max(0.0, timers[0][0] - monotonic())
                self._selecting = True
                try:
                    ready = select(timeout)
                finally:
                    self._selecting = False
                for key, mask in ready:
                    on_read, on_write = key.data
                    if mask & selectors.EVENT_READ and on_read:
                        self._safely(on_read)
                    if mask & selectors.EVENT_WRITE and on_write and key.data[1]:
                        self._safely(key.data[1])
                now = monotonic()
                while timers and timers[0][0] <= now:
                    with self._lock:
                        _, _, due = heapq.heappop(timers)
                    self._safely(functools.partial(due, now))
        finally:
            self.ident = 0
            if previous is not None:
                signal.set_wakeup_fd(previous)

    def _take_signal_wakeups(self) -> int | None:
        """Run on the main thread (``Server.start()``), the loop wakes for every signal,
        whichever thread the kernel gives it to (see SIGNAL_CHECK): the signal module
        writes to our wake socket, and its handler runs here when we read it. Returns
        the descriptor it wrote to before (restored when the loop ends), else None."""
        if not in_main_thread():
            return None
        try:
            return signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        except ValueError:  # (not the main interpreter)
            return None

    def _safely(self, fn: _Callback) -> None:
        try:
            fn()
        except Exception:
            log.exception("the I/O loop's callback %r failed", fn)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class Stream:
    """A non-blocking byte stream. ``recv``: bytes, b"" at EOF, None if there is nothing
    now (raises OSError if the connection is lost). ``write`` queues bytes and sends what
    it can; ``flush`` sends more; ``backlog()`` is what waits for the peer to read."""

    rfd: int
    wfd: int
    selectable = True  #: False for a regular file: always ready, cannot be watched
    framing: str | None = None  #: the session's framing, if the stream sets it ("message": WebSocket, HTTP)
    presents_token = False  #: the stream presents ``auth_token`` itself (an HTTP header)
    local = ""  #: our end's address, if the stream knows it (the web streams)

    def __init__(self) -> None:
        self._out: list[memoryview] = []
        self.pending = 0

    def backlog(self) -> int:
        return self.pending

    def buffered(self) -> bool:
        """Has ``recv`` more to give without the descriptor becoming readable again?"""
        return False

    def recv(self) -> bytes | None:
        raise NotImplementedError

    def _send(self, data: memoryview) -> int:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        self._out.append(memoryview(data))
        self.pending += len(data)
        self.flush()

    def flush(self) -> bool:
        """Send what waits, without blocking; True once all is sent."""
        out = self._out
        while out:
            sent = self._send(out[0])
            if not sent:
                return False
            self.pending -= sent
            if sent == len(out[0]):
                out.pop(0)
            else:
                out[0] = out[0][sent:]
        return True

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        pass

    def peer_certificate(self) -> dict[str, Any] | None:
        return None


class SocketStream(Stream):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        sock.setblocking(False)
        self.sock = sock
        self.rfd = self.wfd = sock.fileno()

    def recv(self) -> bytes | None:
        try:
            return self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def _send(self, data: memoryview) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def write(self, data: bytes) -> None:
        # Nothing waits: one send, and only what the kernel did not take is queued (four
        # calls and a memoryview less per message; a TLS stream keeps the general way).
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]  # (rare: the kernel's buffer is all but full)
        Stream.write(self, data)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class TLSStream(SocketStream):
    """TLS through memory BIOs (so every use of the SSL object is a quick call under the
    connection's lock, never a wait). ``handshake()`` drives the handshake: True once
    done; raises ``ssl.SSLError`` or ``OSError`` if it fails."""

    def __init__(
        self, sock: socket.socket, context: _ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        import ssl as _ssl  # (loaded only by a program that uses TLS: ssl is ~5 MiB)

        super().__init__(sock)
        self._in = _ssl.MemoryBIO()
        self._bio_out = _ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in, self._bio_out, server_side=server_side, server_hostname=server_hostname
        )
        self._raw: list[memoryview] = []  # ciphertext not yet sent
        self.done = False

    def _pull(self) -> bool:
        """Read the socket into the incoming BIO; False if nothing was there."""
        try:
            raw = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        if raw:
            self._in.write(raw)
        else:
            self._in.write_eof()
        return True

    def _push(self) -> bool:
        """Send ciphertext the SSL object produced; True once all is sent."""
        data = self._bio_out.read()
        if data:
            self._raw.append(memoryview(data))
        while self._raw:
            try:
                sent = self.sock.send(self._raw[0])
            except (BlockingIOError, InterruptedError):
                return False
            if sent == len(self._raw[0]):
                self._raw.pop(0)
            else:
                self._raw[0] = self._raw[0][sent:]
        return True

    def handshake(self) -> bool:
        import ssl as _ssl

        while True:
            try:
                self._obj.do_handshake()
            except _ssl.SSLWantReadError:
                self._push()
                if not self._pull():
                    return False
                continue
            self._push()
            self.done = True
            return True

    def recv(self) -> bytes | None:
        import ssl as _ssl

        while True:
            try:
                data = self._obj.read(READ_SIZE)
            except _ssl.SSLWantReadError:
                self._push()
                if not self._pull():
                    return None
                continue
            except _ssl.SSLZeroReturnError:
                return b""
            except _ssl.SSLError as exc:
                if "EOF" in str(exc) or "UNEXPECTED_EOF" in str(exc):
                    return b""  # a ragged EOF: the peer went away without close_notify
                raise
            return data

    write = Stream.write  # (its _send encrypts, and pushes the records out)

    def _send(self, data: memoryview) -> int:
        if self._raw and not self._push():
            return 0
        self._obj.write(data)
        self._push()
        return len(data)  # (taken: what the socket did not, waits as ciphertext)

    def flush(self) -> bool:
        return super().flush() and self._push()

    def backlog(self) -> int:  # what waits, as plaintext and as ciphertext
        return self.pending + sum(map(len, self._raw))

    def buffered(self) -> bool:  # records read from the socket and not yet decrypted
        return self._in.pending > 0 or self._obj.pending() > 0

    def shutdown_write(self) -> None:
        import ssl as _ssl

        try:
            self._obj.unwrap()
        except (_ssl.SSLError, OSError, ValueError):
            pass
        quietly(self._push)  # (our close_notify; the peer may be gone, as for a plain socket)
        super().shutdown_write()

    def peer_certificate(self) -> dict[str, Any] | None:
        try:
            return self._obj.getpeercert() or None
        except ValueError:
            return None


class PipeStream(Stream):
    """Two file descriptors: a child's stdout and stdin, or this process's stdin and
    stdout. ``close_read``/``close_write`` close them (a child's), else they are left
    open (ours) with their blocking mode restored."""

    def __init__(
        self,
        rfd: int,
        wfd: int,
        *,
        close_read: Callable[[], None] | None = None,
        close_write: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.rfd, self.wfd = rfd, wfd
        self._close_read, self._close_write = close_read, close_write
        self._restore = [(fd, os.get_blocking(fd)) for fd in {rfd, wfd}]
        for fd in (rfd, wfd):
            os.set_blocking(fd, False)
        mode = os.fstat(rfd).st_mode
        self.selectable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
        self._write_closed = False

    def recv(self) -> bytes | None:
        try:
            return os.read(self.rfd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def _send(self, data: memoryview) -> int:
        if self._write_closed:
            raise BrokenPipeError("the pipe is closed")
        try:
            return os.write(self.wfd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def shutdown_write(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            if self._close_write is not None:
                try:
                    self._close_write()
                except OSError:
                    pass

    def close(self) -> None:
        self.shutdown_write()
        for fd, blocking in self._restore:
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
        if self._close_read is not None:
            try:
                self._close_read()
            except OSError:
                pass


def quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def linger(
    loop: Loop, stream: Stream, seconds: float, then: Callable[[], None], lock: threading.Lock | None = None
) -> None:
    """Say we are done writing, and read (discarding) until the peer's EOF or for
    ``seconds``: closing with its bytes unread would reset the connection, and the peer
    could lose our last answers. Then ``then()`` (on the loop thread). ``lock`` guards
    the stream (a TLS stream's state) against other threads."""
    with lock or contextlib.nullcontext():
        stream.shutdown_write()
    done = False

    def finish(now: float = 0.0) -> None:
        nonlocal done
        if not done:
            done = True
            loop.watch(stream.rfd, read=None)
            then()

    def readable() -> None:
        try:
            with lock or contextlib.nullcontext():
                while (data := stream.recv()) is not None and data:
                    pass
        except (OSError, ValueError):
            data = b""
        if data is not None:  # EOF (or an error): done
            finish()

    if not stream.selectable or not loop.watch(stream.rfd, read=readable):
        finish()
        return
    loop.call_at(monotonic() + seconds, finish)
