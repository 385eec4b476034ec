"""The caller at the other end of a unix socket, as the kernel tells it (``SO_PEERCRED``).

The JSON socket's file mode decides who may connect; what a connection may then do is
decided from these credentials, taken when the peer connected, so a descriptor handed
to another process keeps the identity of the one that opened it.
"""

from __future__ import annotations

import socket
import struct

from iyclo.core.access import Caller

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_caller(sock: socket.socket) -> Caller:
    """The connected peer of a unix stream socket; ``OSError`` if the kernel cannot say."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return Caller(uid=uid, pid=pid)


def process_start_time(pid: int) -> int:
    """A process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    which polkit's ``unix-process`` subject pairs with the pid so a recycled pid is not
    taken for the caller; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return 0
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[19])
