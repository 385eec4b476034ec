"""How the CLI reaches the daemon: the JSON socket with --socket/IYCLO_SOCKET,
D-Bus otherwise. Both speak the same method names and raise the same typed errors."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import click

from iyclo.cli.output import error_line, fail
from iyclo.errors import InvalidError, IycloError

if TYPE_CHECKING:
    from iyclo.contract.events import Event


class Transport(Protocol):
    def call(self, method: str, **params: Any) -> Any: ...

    def call_passing(self, method: str, fds: Sequence[int], **params: Any) -> Any: ...

    def events(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


def connect(socket_path: str | None, bus: str, timeout: float | None = 300.0) -> Transport:
    path = socket_path or os.environ.get("IYCLO_SOCKET")
    if path:
        from iyclo.client.jsonrpc import JsonRpcClient

        return JsonRpcClient(path, timeout=timeout)
    from iyclo.client.dbus import DBusClient

    return DBusClient(bus=bus, timeout=timeout)


@contextmanager
def daemon(ctx: click.Context) -> Iterator[Transport]:
    """The daemon the root options name; any typed error ends the command in one line
    (every problem of an invalid manifest, one per line), then its hint."""
    opts = ctx.find_root().params
    try:
        transport = connect(opts.get("socket"), opts.get("bus") or "system")
    except IycloError as exc:
        fail(exc)
    try:
        yield transport
    except InvalidError as exc:
        for line in exc.details[1:]:
            error_line(line)
        fail(exc)
    except IycloError as exc:
        fail(exc)
    finally:
        transport.close()
