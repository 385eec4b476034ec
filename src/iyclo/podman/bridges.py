"""Bridge MAC addresses that stay put, where Podman's netavark leaves them to the kernel.

A Linux bridge whose address was never set takes the lowest address of its ports, so it
changes whenever a container with a lower (random) veth address joins or the lowest one
leaves. Every other container on that bridge keeps the old address in its ARP cache for
the gateway, and its packets to the gateway (aardvark-dns, published ports' replies, the
way out) are lost until the entry is refreshed: measured on Debian 12 (Podman 4.3,
netavark 1.4), removing or re-creating one pod of the example app left the others without
DNS for over 30 s. netavark fixed it in 1.9 (containers/netavark#833: the bridge gets the
first veth's address, set), which ships with Podman 4.8 and later; for an older Podman
(``Features.pins_bridge_mac`` false) iyclo does what netavark 1.9 does: once a bridge
exists (netavark makes it with its first container), it sets the bridge's address to the
one it has, which makes the kernel keep it (``addr_assign_type`` becomes "set") without
changing it, so no cache goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
from typing import TYPE_CHECKING

import structlog

from iyclo.errors import IycloError

if TYPE_CHECKING:
    from iyclo.podman.client import PodmanClient

log = structlog.get_logger("iyclo.bridges")

SIOCGIFHWADDR = 0x8927
SIOCSIFHWADDR = 0x8924
SIOCGIFINDEX = 0x8933
_IFREQ = "16s16s8x"
"""``struct ifreq``: the interface name, then a union (here a ``struct sockaddr``), 40 bytes."""


def _ifreq(interface: str, data: bytes = b"") -> bytes:
    return struct.pack(_IFREQ, interface.encode(), data)


def interface_index(interface: str) -> int | None:
    """The interface's index in this network namespace, None when there is no such one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            reply = fcntl.ioctl(sock, SIOCGIFINDEX, _ifreq(interface))
        except OSError:
            return None
    return int(struct.unpack_from("i", reply, 16)[0])


def hardware_address(interface: str) -> bytes:
    """The interface's ``struct sockaddr``: family (ARPHRD_ETHER) and address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        reply = fcntl.ioctl(sock, SIOCGIFHWADDR, _ifreq(interface))
    return reply[16:32]


def keep_address(interface: str) -> str:
    """Set ``interface``'s hardware address to the one it has (so the kernel keeps it);
    the address, as ``ip link`` prints it."""
    address = hardware_address(interface)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFHWADDR, _ifreq(interface, address))
    return ":".join(f"{b:02x}" for b in address[2:8])


class BridgePins:
    """The bridges iyclo has pinned, by interface and index: netavark deletes a bridge
    with its last container and makes a new one (a new index) with the next, which is
    pinned again."""

    def __init__(self) -> None:
        self._pinned: dict[str, int] = {}

    def pin(self, interfaces: list[str]) -> list[str]:
        """Pin each existing bridge of ``interfaces`` not pinned yet; those pinned now."""
        done = []
        for interface in interfaces:
            index = interface_index(interface)
            if index is None or self._pinned.get(interface) == index:
                continue
            try:
                address = keep_address(interface)
            except OSError as exc:
                log.warning("bridge address not pinned", interface=interface, error=str(exc))
                continue
            self._pinned[interface] = index
            log.info("bridge address pinned", interface=interface, address=address)
            done.append(interface)
        return done


class BridgeKeeper:
    """Pins bridges after containers start, for a Podman whose netavark does not
    (``Features.pins_bridge_mac``): a round lists Podman's bridge networks and pins each
    bridge that exists. Rounds do not overlap; starts during one ask for one more."""

    def __init__(self, podman: PodmanClient) -> None:
        self._podman = podman
        self._pins = BridgePins()
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def soon(self) -> None:
        """A container started: a new bridge may exist (netavark made it just now)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._rounds())

    async def _rounds(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.round()
            except IycloError as exc:  # Podman away: the next start asks again
                log.debug("bridge round skipped", error=exc.message)

    async def round(self) -> list[str]:
        """Pin what needs it now; the interfaces pinned."""
        if (await self._podman.platform()).features.pins_bridge_mac:
            return []
        return self._pins.pin(await self._podman.bridge_interfaces())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
