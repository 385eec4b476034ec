"""Who may do what: one decision for both fronts.

iyclod runs as root and holds what operators deploy, so the fronts never decide alone
(a socket's file mode, a bus policy file): each call names its caller (``Caller``: the
uid the kernel or the bus daemon vouches for) and its verb (``Access``, from the method
table), and ``Gate`` answers:

* reads are open to every local user, who sees ``env`` values as "<redacted>";
* root and members of the deploy group (``deployGroup`` in the daemon's config, default
  ``iyclo``) may do everything, reads in full included;
* anyone else may do what polkit grants them per verb (``io.github.iyclo1.deploy``,
  ``.manage``, ``.read-logs``), when polkit runs on the host: the operator's rules in
  ``/etc/polkit-1/rules.d`` can hand one verb to one user without the whole group;
* everything else is refused with ``AccessDeniedError``, one line naming the verb.

Membership is read from the user database (``getgrouplist``), as polkit's
``unix-group:`` identities are, so a process cannot claim a group by its own gid: being
let through the JSON socket's file mode is not being a member.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
from typing import Protocol

from attrs import frozen

from iyclo.contract.methods import Access
from iyclo.errors import AccessDeniedError

DEFAULT_DEPLOY_GROUP = "iyclo"


@frozen
class Caller:
    """Who is calling, as the kernel (``SO_PEERCRED``) or the bus daemon
    (``GetConnectionCredentials``) tells it, never as the caller says."""

    uid: int
    pid: int = 0
    bus_name: str = ""
    """The caller's unique name on the bus (D-Bus calls only): polkit's subject."""

    @property
    def user(self) -> str:
        """``uid 1000 (alice)``: how refusals name the caller."""
        try:
            return f"uid {self.uid} ({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid {self.uid}"


ROOT = Caller(uid=0)
"""The daemon itself and root's own tools."""


class Authority(Protocol):
    """A second opinion for callers outside the deploy group: polkit, when installed."""

    async def allows(self, caller: Caller, action_id: str) -> bool: ...


def is_member(uid: int, group: str) -> bool:
    """Whether the user ``uid`` belongs to ``group`` in the user database."""
    try:
        gid = grp.getgrnam(group).gr_gid
        account = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(account.pw_name, account.pw_gid)


class Gate:
    """The access decision of ``iyclo.core.access``."""

    def __init__(
        self, deploy_group: str = DEFAULT_DEPLOY_GROUP, authority: Authority | None = None
    ) -> None:
        self.deploy_group = deploy_group
        self.authority = authority

    async def allowed(self, caller: Caller, access: Access) -> bool:
        return (await self._decide(caller, access))[0]

    async def _decide(self, caller: Caller, access: Access) -> tuple[bool, str]:
        """(allowed, why not): an authority that cannot decide is a refusal, its reason
        kept for the message, never a grant."""
        if access is Access.READ or caller.uid == 0:
            return True, ""
        # The user database may be remote (LDAP, sssd): never block the event loop on it.
        if await asyncio.to_thread(is_member, caller.uid, self.deploy_group):
            return True, ""
        if self.authority is None:
            return False, ""
        try:
            return await self.authority.allows(caller, access.action_id), ""
        except AccessDeniedError as exc:
            return False, exc.message

    async def require(self, caller: Caller, access: Access, what: str) -> None:
        """Refuse ``what`` (the method's name) unless ``caller`` may ``access``."""
        allowed, reason = await self._decide(caller, access)
        if allowed:
            return
        granted = f"root and members of group '{self.deploy_group}'"
        if self.authority is not None:
            granted += f", or whom polkit grants {access.action_id},"
        raise AccessDeniedError(
            f"{what}: access denied: {caller.user} may not {access.value}; only {granted} may"
            + (f" ({reason})" if reason else ""),
            hint=f"an administrator can run: usermod -aG {self.deploy_group} <user>",
        )

    async def may_reveal(self, caller: Caller) -> bool:
        """Whether ``caller`` sees manifests whole: who may write one may read one."""
        return await self.allowed(caller, Access.DEPLOY)
