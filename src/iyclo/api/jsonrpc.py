"""The JSON socket: newline-delimited JSON-RPC 2.0 on a unix socket.

A thin adapter over ``Service``: it decodes a line, checks the parameters against the
method registry (``iyclo.contract.methods``), calls one method, encodes the result or the
typed error; a bug answers only with an incident id (``api.incident``). Usable with
``socat``/``nc -U``. Every client is bounded: a line longer than ``max_line`` is
answered with an error and the client dropped; a client silent for ``idle_timeout`` is
dropped; neither stalls others.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import grp
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from iyclo.api.guard import Guarded, fixed
from iyclo.api.incident import incident
from iyclo.api.peer import peer_caller
from iyclo.api.protocol import ServiceApi
from iyclo.contract.events import Event
from iyclo.contract.methods import BY_NAME, ParamsError, bind
from iyclo.core.access import Gate
from iyclo.core.handover import Handover, close_all
from iyclo.errors import ConflictError, InvalidError, IycloError
from iyclo.jsonline import encode_line

log = structlog.get_logger("iyclo.jsonrpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

MAX_LINE = 1024 * 1024
MAX_SUBSCRIPTIONS = 4
"""Event streams one connection may hold: each costs a task and a queue in the daemon."""
IDLE_TIMEOUT = 300.0
FDS_TIMEOUT = 10.0
"""Seconds a client has to send the descriptors the daemon asked for."""
_INT_SIZE = array.array("i").itemsize

Handler = Callable[..., Awaitable[Any]]


def _error(code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return error


def error_for(exc: IycloError) -> dict[str, Any]:
    """The JSON-RPC error object of a typed iyclo error (same code on every front)."""
    data: dict[str, Any] = {"type": exc.dbus_name.rsplit(".", 1)[-1]}
    if isinstance(exc, InvalidError):
        data["details"] = exc.details
    if exc.hint:
        data["hint"] = exc.hint  # for the CLI to print; the message stands without it
    return _error(exc.rpc_code, exc.message, data)


def handlers(service: ServiceApi) -> dict[str, Handler]:
    """JSON-RPC method name → coroutine, one per method of ``iyclo.contract.methods``;
    parameters arrive by name, already checked against the registry (``bind``)."""

    async def apply(manifest: str | dict[str, Any], wait_timeout: float | None) -> dict[str, Any]:
        return (await service.apply(manifest, wait_timeout)).to_json()

    async def rollback(name: str, to: int) -> dict[str, Any]:
        return (await service.rollback(name, to)).to_json()

    async def validate(manifest: str | dict[str, Any]) -> list[str]:
        return await service.validate(manifest)

    async def diff(manifest: str | dict[str, Any]) -> str:
        return await service.diff(manifest)

    async def remove(name: str, purge_history: bool, volumes: bool) -> None:
        await service.remove(name, purge_history, volumes)

    async def volumes() -> list[dict[str, Any]]:
        return await service.volumes()

    async def start(name: str) -> str:
        return await service.start(name)

    async def stop(name: str) -> str:
        return await service.stop(name)

    async def restart(name: str) -> str:
        return await service.restart(name)

    async def list_() -> list[dict[str, Any]]:
        return await service.list_all()

    async def get(name: str) -> dict[str, Any]:
        return await service.status(name)

    async def get_manifest(name: str, generation: int) -> dict[str, Any]:
        return await service.manifest(name, generation)

    async def history(name: str) -> list[dict[str, Any]]:
        return await service.history(name)

    async def runs(name: str) -> list[dict[str, Any]]:
        return await service.runs(name)

    async def logs(name: str, run: int, lines: int | None) -> dict[str, Any]:
        return await service.logs(name, run, lines)

    async def reconcile() -> dict[str, Any]:
        return (await service.reconcile()).to_json()

    async def run_job(name: str) -> dict[str, Any]:
        return await service.run_job(name)

    async def health() -> dict[str, Any]:
        return service.health()

    async def pull(manifest: str | dict[str, Any], image: str) -> dict[str, Any]:
        return await service.pull(manifest, image)

    async def exec_(name: str, container: str, command: list[str], tty: bool,
                    interactive: bool, *, handover: Handover) -> int:  # fmt: skip
        return await service.exec(name, container, command, tty, interactive, handover=handover)

    async def follow_logs(name: str, lines: int, *, handover: Handover) -> None:
        await service.follow_logs(name, lines, handover=handover)

    async def stats(names: list[str]) -> dict[str, Any]:
        return await service.stats(names)

    async def version() -> str:
        return service.version()

    return {
        "apply": apply, "rollback": rollback, "validate": validate, "diff": diff,
        "remove": remove, "start": start, "stop": stop, "restart": restart, "list": list_,
        "get": get,
        "get_manifest": get_manifest, "history": history, "runs": runs, "logs": logs,
        "reconcile": reconcile, "run_job": run_job, "pull": pull, "version": version,
        "health": health, "exec": exec_, "follow_logs": follow_logs, "stats": stats,
        "volumes": volumes,
    }  # fmt: skip


@dataclasses.dataclass
class _Connection:
    """One client: its methods (the service as this peer may use it), its writer's
    lock and its event streams."""

    methods: dict[str, Handler]
    send: Callable[[dict[str, Any] | list[dict[str, Any]]], Awaitable[None]]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    streams: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)


class _SocketHandover:
    """``core.handover.Handover`` on the JSON socket: the descriptors come after the
    daemon's ``fds`` notification, by ``SCM_RIGHTS`` on one byte; the caller is gone
    when its connection is. While the call runs, whatever else the client sends is
    read and dropped (the connection is the call's until it answers)."""

    def __init__(self, method: str, rid: Any, conn: _Connection) -> None:
        self._method = method
        self._rid = rid
        self._conn = conn
        self._eof = False

    async def receive(self, count: int) -> list[int]:
        transport = self._conn.writer.transport
        # Paused first: a read by the stream would drop the descriptors the byte carries.
        transport.pause_reading()  # type: ignore[attr-defined]
        try:
            await self._conn.send({"jsonrpc": "2.0", "method": "fds",
                                   "params": {"id": self._rid, "count": count}})  # fmt: skip
            async with asyncio.timeout(FDS_TIMEOUT):
                data, fds = await _recv_fds(self._conn.writer, count)
        except TimeoutError:
            raise InvalidError(
                f"{self._method}: the client sent no file descriptors within {FDS_TIMEOUT:g}s"
            ) from None
        finally:
            transport.resume_reading()  # type: ignore[attr-defined]
        if not data:
            self._eof = True
        if len(fds) != count:
            close_all(fds)
            raise InvalidError(
                f"{self._method}: expected {count} file descriptors, the client sent {len(fds)}"
            )
        return fds

    async def gone(self) -> None:
        if self._eof:
            return
        while await self._conn.reader.read(65536):
            pass


class _Idle:
    """Drops a client silent for ``timeout`` seconds while it holds no event stream: its
    connection is closed, so the read it waits in ends. Silent is waiting for a request;
    a call in progress is not.

    One timer per connection, moved on only when it fires, not a timeout made and
    cancelled around each line read: that cost ~5 µs of every call (an ``asyncio.timeout``
    and a timer in the loop's heap per line)."""

    def __init__(
        self, timeout: float, writer: asyncio.StreamWriter, streams: set[asyncio.Task[None]]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._writer = writer
        self._streams = streams
        self._since: float | None = None
        self.expired = False
        self._timer = self._loop.call_later(timeout, self._check)

    def waiting(self) -> None:
        """The connection waits for its next request from now on."""
        self._since = self._loop.time()

    def busy(self) -> None:
        """A request arrived: not silent until ``waiting`` again."""
        self._since = None

    def cancel(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and not self._streams and now - since >= self._timeout:
            self.expired = True
            log.info("dropping idle client")
            self._writer.close()
            return
        due = self._timeout if since is None or self._streams else since + self._timeout - now
        self._timer = self._loop.call_later(due, self._check)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _recv_fds(writer: asyncio.StreamWriter, count: int) -> tuple[bytes, list[int]]:
    """One byte and the descriptors it carries, read from the stream's socket while the
    stream is paused (through a duplicate of it: asyncio does not lend its own)."""
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno())) as sock:
        sock.setblocking(False)
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _settle, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        space = socket.CMSG_SPACE(max(count, 1) * _INT_SIZE)
        data, ancillary, _flags, _addr = sock.recvmsg(1, space, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(array.array("i", payload[:usable]))
    return data, fds


class JsonRpcServer:
    def __init__(
        self,
        service: ServiceApi,
        path: Path,
        *,
        gate: Gate | None = None,
        group: str | None = None,
        max_line: int = MAX_LINE,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.service = service
        self.path = path
        self.gate = gate or Gate()
        self.group = group
        """The socket's group (mode 0660); None: root's group. Connecting is not being
        allowed: each call is still checked against the peer's credentials."""
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            listening = self._bind()
            self._server = await asyncio.start_unix_server(
                self._serve, sock=listening, limit=self.max_line
            )
        except OSError as exc:
            raise IycloError(
                f"cannot listen on JSON socket {self.path}: {exc.strerror or exc}"
            ) from None
        log.info("json socket listening", path=str(self.path), group=self.group or "root")

    def _bind(self) -> socket.socket:
        """The listening socket, at ``path`` with its final mode and group from the moment
        it is there: bound under a temporary name (0600 by the daemon's umask), given
        0660 and the group, then renamed into place, so no one ever finds it looser."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        gid = grp.getgrnam(self.group).gr_gid if self.group else -1
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listening.bind(str(staging))
            os.chown(staging, -1, gid)
            os.chmod(staging, 0o660)
            os.rename(staging, self.path)
            listening.listen(128)
        except BaseException:
            listening.close()
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            raise
        return listening

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            caller = peer_caller(writer.get_extra_info("socket"))
        except OSError as exc:
            log.warning("dropping a client the kernel cannot name", error=str(exc))
            writer.close()
            return
        self._clients.add(task)
        lock = asyncio.Lock()

        async def send(message: dict[str, Any] | list[dict[str, Any]]) -> None:
            async with lock:
                writer.write(encode_line(message))
                await writer.drain()

        conn = _Connection(
            handlers(Guarded(self.service, self.gate, fixed(caller))), send, reader, writer
        )
        streams = conn.streams
        idle = _Idle(self.idle_timeout, writer, streams)
        try:
            while True:
                idle.waiting()
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await send(
                        {
                            "jsonrpc": "2.0",
                            "id": None,
                            "error": _error(
                                INVALID_REQUEST, f"request longer than {self.max_line} bytes"
                            ),
                        }
                    )
                    break
                if not line or idle.expired:
                    break
                idle.busy()
                if not line.strip():
                    continue
                reply = await self._handle(line, conn)
                if reply is not None:
                    await send(reply)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            idle.cancel()
            for stream in streams:
                stream.cancel()
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(
        self, line: bytes, conn: _Connection
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        """One line: a request, or a batch of them (JSON-RPC 2.0, section 6).

        A batch is answered with the array of its replies, in order, leaving out the
        notifications'; an empty batch is one Invalid Request, and a batch of notifications
        only gets no answer at all.
        """
        try:
            request = json.loads(line)
        except RecursionError:  # nested deeper than the decoder can go
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": _error(PARSE_ERROR, "parse error: nested too deeply"),
            }
        except ValueError as exc:  # not JSON, not UTF-8, or a number too long to convert
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": _error(PARSE_ERROR, f"parse error: {exc}"),
            }
        if not isinstance(request, list):
            return await self._handle_one(request, conn)
        if not request:
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": _error(INVALID_REQUEST, "invalid request: an empty batch"),
            }
        replies = [await self._handle_one(item, conn) for item in request]
        answered = [reply for reply in replies if reply is not None]
        return answered or None

    async def _handle_one(self, request: Any, conn: _Connection) -> dict[str, Any] | None:
        """A reply to one request object; None for a notification (a request without an
        "id" member), which is never answered, not even with an error."""
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("id"), str | int | float | None)
            or isinstance(request.get("id"), bool)
        ):
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": _error(
                    INVALID_REQUEST,
                    'invalid request: expected {"jsonrpc": "2.0", "method": ..., "id": '
                    "a string, a number or null}",
                ),
            }
        reply = await self._reply(request, conn)
        return None if "id" not in request else reply

    async def _reply(self, request: dict[str, Any], conn: _Connection) -> dict[str, Any]:
        rid = request.get("id")
        method = request.get("method")
        params = request.get("params", {})
        if not isinstance(method, str):
            return {"jsonrpc": "2.0", "id": rid, "error": _error(INVALID_REQUEST, "method missing")}
        streams = conn.streams
        if method == "subscribe":
            if len(streams) >= MAX_SUBSCRIPTIONS:
                too_many = ConflictError(
                    f"this connection already has {len(streams)} event subscriptions "
                    f"(at most {MAX_SUBSCRIPTIONS})"
                )
                return {"jsonrpc": "2.0", "id": rid, "error": error_for(too_many)}
            stream = asyncio.create_task(self._stream_events(conn.send))
            streams.add(stream)
            stream.add_done_callback(streams.discard)
            return {"jsonrpc": "2.0", "id": rid, "result": {"subscribed": True}}
        handler = conn.methods.get(method)
        if handler is None:
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": _error(METHOD_NOT_FOUND, f"unknown method '{method}'"),
            }
        if not isinstance(params, dict | list):
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": _error(INVALID_PARAMS, "params must be an object or an array"),
            }
        try:
            arguments = bind(method, params)
        except ParamsError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": _error(INVALID_PARAMS, str(exc))}
        if BY_NAME[method].fds:
            arguments["handover"] = _SocketHandover(method, rid, conn)
        try:
            result = await handler(**arguments)
        except IycloError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": error_for(exc)}
        except Exception:  # a bug must not take the daemon down, nor reach the client
            internal = incident("JSON-RPC method failed", method=method)
            error = _error(INTERNAL_ERROR, internal.message, {"incident": internal.incident})
            return {"jsonrpc": "2.0", "id": rid, "error": error}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def _stream_events(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        event: Event
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            async for event in self.service.events.stream():
                await send({"jsonrpc": "2.0", "method": "event", "params": event.to_json()})
