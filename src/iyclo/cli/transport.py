"""How the CLI reaches the daemon: the JSON socket with --socket/IYCLO_SOCKET,
D-Bus otherwise. Both speak the same method names and raise the same typed errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from iyclo.contract.events import Event


class Transport(Protocol):
    def call(self, method: str, **params: Any) -> Any: ...

    def events(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


def connect(socket_path: str | None, bus: str, timeout: float | None = 300.0) -> Transport:
    path = socket_path or os.environ.get("IYCLO_SOCKET")
    if path:
        from iyclo.client.jsonrpc import JsonRpcClient

        return JsonRpcClient(Path(path), timeout=timeout)
    from iyclo.client.dbus import DBusClient

    return DBusClient(bus=bus, timeout=timeout)
