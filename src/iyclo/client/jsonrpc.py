"""A small blocking client of the JSON socket (the CLI's transport with --socket).

Blocking, on the stdlib's ``socket`` and ``json``: it is on the path of every
``iyclo --socket … ps``, which must start in little more than the interpreter's time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from iyclo.contract.methods import ParamsError, bind
from iyclo.errors import AccessDeniedError, InvalidError, IycloError, error_from_rpc_code

if TYPE_CHECKING:  # the events' classes (~10 ms to make) only for a client that streams
    from iyclo.contract.events import Event


class JsonRpcClient:
    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = 300.0) -> None:
        self.path = os.fspath(path)  # a str or a Path: pathlib is not imported for it
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(self.path)
        except PermissionError:
            self._sock.close()  # closed here, not by the garbage collector (ResourceWarning)
            raise AccessDeniedError(
                f"not allowed to use the iyclo socket {self.path} (root or its group only)"
            ) from None
        except OSError as exc:
            self._sock.close()
            raise IycloError(
                f"cannot reach the iyclo daemon at {self.path}: {exc.strerror or exc}"
            ) from None
        self._file = self._sock.makefile("rwb")

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the daemon may have dropped us already
            self._file.close()
        self._sock.close()

    def __enter__(self) -> JsonRpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise IycloError(f"the iyclo daemon at {self.path} closed the connection")
        message: dict[str, Any] = json.loads(line)
        return message

    def call(self, method: str, **params: Any) -> Any:
        """Call `method`; a typed error comes back as the matching IycloError. Parameters
        that do not fit the method are refused here, as the D-Bus client refuses them."""
        try:
            arguments = bind(method, params)
        except ParamsError as exc:
            raise InvalidError(str(exc)) from None
        return self._request(method, arguments)

    def call_passing(self, method: str, fds: Sequence[int], **params: Any) -> Any:
        """Call ``method``, one that takes the caller's file descriptors (``exec``,
        ``follow_logs``): ``fds`` are sent when the daemon asks for them (its ``fds``
        notification), by ``SCM_RIGHTS``; no timeout, as the call lasts as long as the
        command or the following does. The caller keeps its own copies."""
        try:
            arguments = bind(method, params)
        except ParamsError as exc:
            raise InvalidError(str(exc)) from None
        self._sock.settimeout(None)
        return self._request(method, arguments, fds=fds)

    def _request(self, method: str, params: dict[str, Any], fds: Sequence[int] = ()) -> Any:
        rid = next(self._ids)
        request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        # The stdlib, not ``iyclo.jsonline``: a request is a few hundred bytes, and orjson's
        # import (dataclasses with it) would be ~1.4 ms of every CLI command's start.
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if reply.get("method") == "fds" and (reply.get("params") or {}).get("id") == rid:
                socket.send_fds(self._sock, [b"\0"], list(fds))
                continue
            if reply.get("id") == rid:
                break
        if "error" in reply:
            error = reply["error"]
            exc = error_from_rpc_code(int(error.get("code", -32000)), str(error.get("message")))
            data = error.get("data") or {}
            details = data.get("details")
            if details is not None and hasattr(exc, "details"):
                exc.details = list(details)
            exc.hint = data.get("hint") or None
            raise exc
        return reply.get("result")

    def events(self) -> Iterator[Event]:
        """Subscribe now, then yield each event notification as it arrives.

        The subscription is in place when this returns, as with the D-Bus client, so a
        call made next on another connection (``iyclo apply`` showing its pull's
        progress) misses none of its events.
        """
        self._request("subscribe", {})
        self._sock.settimeout(None)
        return self._iterate_events()

    def _iterate_events(self) -> Iterator[Event]:
        from iyclo.contract.events import event_from_json

        while True:
            message = self._read()
            if message.get("method") == "event":
                try:
                    yield event_from_json(message.get("params") or {})
                except (TypeError, ValueError):
                    continue  # not what this version of the contract describes
