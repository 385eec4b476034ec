"""What a caller hands over besides its parameters: its own file descriptors, and its
presence.

``iyclo exec`` and ``iyclo logs -f`` run in the daemon for as long as their caller is
there, on the caller's descriptors (its terminal, its pipes): each front passes them in
its own way (D-Bus: ``h`` arguments of the call; the JSON socket: ``SCM_RIGHTS`` after
the daemon asked for them) and says when the caller went away (D-Bus: its unique name
lost its owner; the JSON socket: the connection closed). The service sees only this
protocol, so both fronts behave alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Protocol


class Handover(Protocol):
    async def receive(self, count: int) -> list[int]:
        """The caller's ``count`` descriptors, asked for once the call was checked (what
        a refused call was given is never used); from here they are the callee's to
        close. ``InvalidError`` if the caller gives another number of them."""
        ...

    async def gone(self) -> None:
        """Return once the caller has gone away (its connection closed)."""
        ...


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
