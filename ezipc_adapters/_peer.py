"""What can be known about the peer of a socket: its address, TLS certificate, and for a
Unix socket its process credentials (SO_PEERCRED, Linux)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import NamedTuple

__all__ = ["PeerCredentials", "peer_credentials", "format_sockaddr", "free_unix_path"]


class PeerCredentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """The credentials of the process at the other end of a Unix socket (Linux), or None."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None or sock.family != getattr(socket, "AF_UNIX", None):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
    except OSError:
        return None
    return PeerCredentials(*struct.unpack("3i", raw))


def format_sockaddr(family: int, addr: object) -> str:
    """``tcp://host:port`` / ``unix:path`` for a socket address."""
    if family == getattr(socket, "AF_UNIX", None):
        return f"unix:{addr!s}" if addr else "unix:"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"tcp://[{host}]:{addr[1]}" if ":" in host else f"tcp://{host}:{addr[1]}"
    return str(addr)


def free_unix_path(path: str) -> None:
    """Make ``path`` free for a new Unix socket: remove a dead socket left behind; refuse
    (OSError) to take over a live one, one we cannot probe (e.g. EACCES: it may well be
    live), or a file that is not a socket."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # nobody listening
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        raise OSError(exc.errno, f"cannot tell whether a server listens on ({exc.strerror})", path) from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a server is already listening on", path)
