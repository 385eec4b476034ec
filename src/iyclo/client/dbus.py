"""A small blocking client of iyclod's D-Bus interface (the CLI's default transport).

It speaks the JSON socket's method names and returns the JSON socket's shapes, so the
CLI does not care which transport it has: each call is built from the method registry
(``iyclo.contract.methods``: member, signature, argument order) and its reply decoded by
the registry's out-argument; typed D-Bus errors come back as the matching
``IycloError``. It imports only dbus-fast, the stdlib and ``iyclo.errors`` so that a
CLI command stays quick to start. The asyncio parts run on a private event loop that
lives as long as the client; each public method runs it until its answer is in.

What the generic rule cannot say, and why:
- ``list``: ``List`` gives the names, ``Get`` each one's full status (the struct of
  ``List`` is for ``busctl`` users and cannot carry nested containers); one removed in
  between is left out, as ``Service.list_all`` does.
- ``apply``: name and kind are read back from the returned object path
  (``/io/github/iyclo1/<kind>/<label>``); the rest is in the reply.
- ``version`` is the ``Version`` property; ``remove`` with ``purge_history`` is ``Purge``,
  with ``volumes`` ``RemoveWith``.
- ``events``: each signal decodes to the event type of its member, as the JSON socket's
  notifications do, so both transports yield equal events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, ClassVar

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from iyclo.contract.events import Event, event_from_signal
from iyclo.contract.methods import BY_NAME, Method, Param, ParamsError, bind
from iyclo.errors import (
    DBUS_ERROR_PREFIX,
    AccessDeniedError,
    InvalidError,
    IycloError,
    NotFoundError,
    error_from_dbus_name,
)

BUS_NAME = "io.github.iyclo1"
MANAGER_PATH = "/io/github/iyclo1"
MANAGER_INTERFACE = "io.github.iyclo1.Manager"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
EVENT_MATCH = (
    f"type='signal',sender='{BUS_NAME}',path='{MANAGER_PATH}',interface='{MANAGER_INTERFACE}'"
)
NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
}
CLOSE_TIMEOUT = 5.0
_UINT32_MAX = 2**32 - 1


def bus_label_unescape(label: str) -> str:
    """The inverse of sd-bus's ``bus_label_escape`` (``_`` alone is the empty string)."""
    if label == "_":
        return ""
    out = bytearray()
    index = 0
    while index < len(label):
        if label[index] == "_" and _is_hex(label[index + 1 : index + 3]):
            out.append(int(label[index + 1 : index + 3], 16))
            index += 3
        else:
            out.extend(label[index].encode())
            index += 1
    return out.decode(errors="replace")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def _applied(reply: list[Any]) -> dict[str, Any]:
    """Apply's and Rollback's reply: name and kind come back in the object path
    (/io/github/iyclo1/<kind>/<label>)."""
    path, generation, changed, state = reply
    collection, _, label = str(path).removeprefix(f"{MANAGER_PATH}/").partition("/")
    return {
        "name": bus_label_unescape(label),
        "kind": collection.capitalize(),
        "generation": generation,
        "changed": changed,
        "state": state,
    }


def _manifest_text(manifest: str | dict[str, Any]) -> str:
    return manifest if isinstance(manifest, str) else json.dumps(manifest)


async def _cancel_the_rest(keep: asyncio.Task[None] | None = None) -> None:
    """What a Ctrl-C left half-done, cancelled as ``asyncio.run`` does before closing."""
    tasks = asyncio.all_tasks() - {asyncio.current_task(), keep}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class DBusClient:
    """Blocking calls to iyclod over D-Bus; one connection for the client's life."""

    SPECIAL: ClassVar[frozenset[str]] = frozenset({"apply", "rollback", "list", "version"})
    """Methods the registry's generic rule cannot say (see the module doc)."""

    def __init__(
        self,
        bus: str = "system",
        *,
        bus_address: str | None = None,
        timeout: float | None = 300.0,
    ) -> None:
        if bus_address is None and bus not in ("system", "session"):
            raise InvalidError(f'bus: "{bus}" is not "system" or "session"')
        self.label = f"the {bus} bus" if bus_address is None else f"the bus at {bus_address}"
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._events: asyncio.Queue[Event] | None = None
        self._gone: asyncio.Task[None] | None = None
        self._closed = False
        try:
            self._bus = self._loop.run_until_complete(self._connect(bus, bus_address))
        except BaseException:
            self._loop.close()
            raise
        # What the registry's generic rule (one member, one decoded reply) cannot say.
        self._special: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, Any]]] = {
            "apply": self._apply,
            "rollback": self._rollback,
            "list": self._list,
            "version": self._version,
        }
        assert set(self._special) == self.SPECIAL

    async def _connect(self, bus: str, bus_address: str | None) -> MessageBus:
        if bus_address is not None:
            message_bus = MessageBus(bus_address=bus_address, negotiate_unix_fd=True)
        else:
            kind = BusType.SYSTEM if bus == "system" else BusType.SESSION
            message_bus = MessageBus(bus_type=kind, negotiate_unix_fd=True)
        try:
            async with asyncio.timeout(self.timeout):
                return await message_bus.connect()
        except TimeoutError:
            raise IycloError(f"cannot reach {self.label}: no answer") from None
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise IycloError(f"cannot reach {self.label}: {reason}") from None

    # -- the transport protocol ----------------------------------------------------------

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` (a JSON socket method name); typed errors raise their class."""
        try:
            arguments = bind(method, params)
        except ParamsError as exc:
            raise InvalidError(str(exc)) from None
        return self._run(self._invoke(BY_NAME[method], arguments))

    def call_passing(self, method: str, fds: Sequence[int], **params: Any) -> Any:
        """Call ``method``, one that takes the caller's file descriptors (``exec``,
        ``follow_logs``): ``fds`` go with the call as its ``h`` arguments; no timeout,
        as the call lasts as long as the command or the following does."""
        try:
            arguments = bind(method, params)
        except ParamsError as exc:
            raise InvalidError(str(exc)) from None
        found = BY_NAME[method]
        if len(fds) != len(found.fds):
            raise InvalidError(f"{method}: takes {len(found.fds)} file descriptors, "
                               f"{len(fds)} given")  # fmt: skip
        body = [_encode(method, p, arguments[p.name]) for p in found.params if p.dbus]
        message = Message(
            destination=BUS_NAME, path=MANAGER_PATH, interface=MANAGER_INTERFACE,
            member=found.member, signature=found.dbus_in,
            body=[*body, *range(len(fds))], unix_fds=list(fds),
        )  # fmt: skip
        return _decoded(found, self._run(self._send(message, bounded=False)))

    def events(self) -> Iterator[Event]:
        """Subscribe now, then yield each event signal (``iyclo.contract.events``).

        The subscription is in place when this returns, so nothing that happens after
        it is missed.
        """
        if self._events is None:
            self._events = asyncio.Queue()
            # One waiter for the client's life: cancelling one would cancel dbus-fast's future.
            self._gone = self._loop.create_task(self._disconnected())
            self._bus.add_message_handler(self._on_message)
            self._run(
                self._send(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="AddMatch",
                        signature="s",
                        body=[EVENT_MATCH],
                    )
                )
            )
        return self._iterate_events(self._events)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        waiter = self._gone or self._loop.create_task(self._disconnected())
        self._loop.run_until_complete(_cancel_the_rest(keep=waiter))
        self._bus.disconnect()
        self._loop.run_until_complete(asyncio.wait({waiter}, timeout=CLOSE_TIMEOUT))
        self._loop.run_until_complete(_cancel_the_rest())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def __enter__(self) -> DBusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        if self._closed:
            coroutine.close()
            raise IycloError("the D-Bus client is closed")
        return self._loop.run_until_complete(coroutine)

    async def _send(self, message: Message, *, bounded: bool = True) -> list[Any]:
        """Send one call and wait for its reply under the client's timeout (``bounded``)."""
        member = message.member
        if not self._bus.connected:  # sending on a dead connection only fails later, unseen
            raise IycloError(f"lost the connection to {self.label}")
        try:
            async with asyncio.timeout(self.timeout if bounded else None):
                reply = await self._bus.call(message)
        except TimeoutError:
            raise IycloError(
                f"iyclod did not answer {member} within {self.timeout:g} seconds"
            ) from None
        except Exception as exc:
            raise IycloError(f"cannot call {member} on {self.label}: {exc}") from None
        if reply.message_type is MessageType.ERROR:
            raise self._error(str(member), reply.error_name or "", reply.body)
        body: list[Any] = reply.body
        return body

    async def _manager(self, member: str, signature: str = "", *args: Any) -> list[Any]:
        return await self._send(
            Message(
                destination=BUS_NAME,
                path=MANAGER_PATH,
                interface=MANAGER_INTERFACE,
                member=member,
                signature=signature,
                body=list(args),
            )
        )

    async def _disconnected(self) -> None:
        """Until the connection is gone, however it went (the reason is not ours to show)."""
        with contextlib.suppress(Exception):
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def _error(self, member: str, name: str, body: list[Any]) -> IycloError:
        text = str(body[0]) if body and isinstance(body[0], str) else ""
        if name.startswith(f"{DBUS_ERROR_PREFIX}."):
            lines = text.split("\n")
            exc = error_from_dbus_name(name, lines[0])
            if isinstance(exc, InvalidError):
                exc.details = lines
            if len(body) > 1 and isinstance(body[1], str):
                exc.hint = body[1] or None  # the daemon's advice for the CLI
            return exc
        if name in NOT_RUNNING:
            return IycloError(f"the iyclo daemon is not running on {self.label} ({text})")
        if name == "org.freedesktop.DBus.Error.AccessDenied":
            return AccessDeniedError(
                f"{self.label} refuses {member} to this user (only root may change pods)"
            )
        if name == "org.freedesktop.DBus.Error.NoReply":
            return IycloError(f"iyclod did not answer {member}: {text}")
        return IycloError(f"{member} failed: {name}: {text}")

    def _on_message(self, message: Message) -> None:
        """Queue the daemon's signals; returning None leaves the message to others too."""
        if (
            self._events is None
            or message.message_type is not MessageType.SIGNAL
            or message.path != MANAGER_PATH
            or message.interface != MANAGER_INTERFACE
        ):
            return
        try:
            event = event_from_signal(str(message.member), message.signature, message.body)
        except (TypeError, ValueError):
            return  # not what this version of the contract describes
        if event is not None:
            self._events.put_nowait(event)

    def _iterate_events(self, queue: asyncio.Queue[Event]) -> Iterator[Event]:
        while True:
            yield self._run(self._next_event(queue))

    async def _next_event(self, queue: asyncio.Queue[Event]) -> Event:
        if not queue.empty():
            return queue.get_nowait()
        assert self._gone is not None
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, self._gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter.done() and not getter.cancelled():
            return getter.result()
        raise IycloError(f"lost the connection to {self.label}")

    # -- the methods ----------------------------------------------------------------------

    async def _invoke(self, method: Method, arguments: dict[str, Any]) -> Any:
        """One method of the registry as its Manager member: the arguments in the order
        and types the registry gives, the reply decoded by its out-argument."""
        special = self._special.get(method.name)
        if special is not None:
            return await special(arguments)
        member = method.member
        if method.name == "remove" and arguments["volumes"]:
            # the D-Bus spelling of remove(volumes=True): a member has one signature
            name, purge = arguments["name"], arguments["purge_history"]
            await self._manager("RemoveWith", "sbb", name, purge, True)
            return None
        if method.name == "remove" and arguments["purge_history"]:
            member = "Purge"  # the D-Bus spelling of remove(purge_history=True)
        body = [_encode(method.name, p, arguments[p.name]) for p in method.params if p.dbus]
        return _decoded(method, await self._manager(member, method.dbus_in, *body))

    async def _apply(self, arguments: dict[str, Any]) -> dict[str, Any]:
        manifest = _manifest_text(arguments["manifest"])
        if arguments["wait_timeout"] is None:
            return _applied(await self._manager("Apply", "s", manifest))
        within = float(arguments["wait_timeout"])
        return _applied(await self._manager("ApplyWithin", "sd", manifest, within))

    async def _rollback(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return _applied(await self._manager("Rollback", "su", arguments["name"], arguments["to"]))

    async def _list(self, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        """``List`` names them, ``Get`` gives each one's full status; one removed in
        between is left out, as the service's own list does."""
        (rows,) = await self._manager("List")
        get = BY_NAME["get"]

        async def status(name: str) -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = await self._invoke(get, {"name": name})
            except NotFoundError:
                return None
            return found

        found = await asyncio.gather(*(status(row[0]) for row in rows))
        return [s for s in found if s is not None]

    async def _version(self, arguments: dict[str, Any]) -> str:
        (variant,) = await self._send(
            Message(
                destination=BUS_NAME,
                path=MANAGER_PATH,
                interface=PROPERTIES_INTERFACE,
                member="Get",
                signature="ss",
                body=[MANAGER_INTERFACE, "Version"],
            )
        )
        return str(variant.value)


def _decoded(method: Method, reply: list[Any]) -> Any:
    """A reply by the method's one out-argument (JSON text decoded), or None."""
    if not method.out:
        return None
    (value,) = reply
    out = method.out[0]
    if out.name.endswith("_json"):
        return json.loads(value)
    return list(value) if out.dbus.startswith("a") else value


def _encode(method: str, param: Param, value: Any) -> Any:
    """A parameter as its D-Bus argument: manifests as JSON text, no limit as 0."""
    if param.name == "manifest":
        return _manifest_text(value)
    if param.dbus == "u":
        value = 0 if value is None else value
        if not 0 <= value <= _UINT32_MAX:
            raise InvalidError(f"{method}: parameter '{param.name}' is out of range: {value!r}")
    return value
