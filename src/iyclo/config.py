"""iyclod's configuration: what the operator allows beyond the secure defaults.

The file (``--config``, default ``/etc/iyclo/iyclo.json``) is JSON with the camelCase keys
of ``Policy``, every one optional; shown here with their defaults::

    {"deployGroup": "iyclo",
     "policy": {"allowPrivileged": false,
                "allowUnconfinedSeccomp": false,
                "allowHostNetwork": false,
                "bindMountAllow": ["/srv", "/var/lib/iyclo/volumes"],
                "seccompProfileAllow": ["/etc/iyclo/seccomp", "/var/lib/iyclo/seccomp"],
                "capAddAllow": [],
                "usernsRanges": [{"start": 2147483648, "size": 2147483647}],
                "sharedVolumes": [],
                "labelKeysAllow": [],
                "secretFileAllow": ["/etc/iyclo/secrets"],
                "envFileAllow": ["/etc/iyclo/env"]}}

A list in the file replaces the default list. ``usernsRanges`` are the host IDs set aside
for pods' user namespaces (see ``policy.DEFAULT_USERNS_RANGES`` for why these); a
manifest's ``userns`` must lie inside one. ``sharedVolumes`` names the named volumes any
manifest may mount; every other named volume belongs to the pod or job that made it.
``labelKeysAllow`` lets manifests set label keys Podman acts on, each an exact key or a
prefix ending in "." (e.g. ``"io.containers.autoupdate"`` for ``podman auto-update``).
``secretFileAllow`` are the directories a secret's ``file`` may be in: iyclod reads it as
root and hands it to a container, so a manifest must not name just any host file;
``envFileAllow`` the same for a container's ``envFiles``.

``deployGroup`` names the group whose members may deploy and manage pods and jobs and
read them whole (``iyclo.core.access``); it also owns the JSON socket. Everyone else reads
state with ``env`` values redacted, and does what polkit grants, when it is installed.

A missing default file means the defaults; a missing file given with ``--config``, an
unknown key, a wrongly typed value or an impossible ID range stops the daemon with the key's
path: a typo in a security setting must never pass silently.

Flags only loosen what the file says: ``--allow-privileged``, ``--allow-unconfined``,
``--allow-host-network`` switch a permission on, and ``--bind-mount-root``,
``--seccomp-profile-root`` and ``--allow-cap`` (each repeatable) add to the lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
from attrs import frozen

from iyclo.core.access import DEFAULT_DEPLOY_GROUP
from iyclo.errors import InvalidError
from iyclo.manifest.convert import structure
from iyclo.manifest.policy import Policy, policy_problems
from iyclo.manifest.values import AbsPath, Capability

DEFAULT_CONFIG = Path("/etc/iyclo/iyclo.json")


GROUP_RE = re.compile(r"^[a-z_][a-z0-9_-]*[$]?$")  # useradd's NAME_REGEX, shadow's default


@frozen
class DaemonConfig:
    policy: Policy = attrs.field(factory=Policy)
    deploy_group: str = DEFAULT_DEPLOY_GROUP


def config_problems(config: DaemonConfig) -> list[str]:
    found = policy_problems(config.policy)
    if not GROUP_RE.fullmatch(config.deploy_group) or len(config.deploy_group) > 32:
        found.append(f"deployGroup: {json.dumps(config.deploy_group)} is not a group name")
    return found


def load_config(path: Path, *, required: bool) -> DaemonConfig:
    """The config in ``path``; the defaults when it is missing and not ``required``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise InvalidError(f"{path}: no such file") from None
        return DaemonConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    try:
        config = structure(data, DaemonConfig)
    except InvalidError as exc:
        details = [f"{path}: {line}" for line in exc.details]
        raise InvalidError(details[0], details) from None
    details = [f"{path}: {line}" for line in config_problems(config)]
    if details:
        raise InvalidError(details[0], details)
    return config


def loosen(
    policy: Policy,
    *,
    allow_privileged: bool = False,
    allow_unconfined: bool = False,
    allow_host_network: bool = False,
    bind_mount_roots: Sequence[str] = (),
    seccomp_profile_roots: Sequence[str] = (),
    allow_caps: Sequence[str] = (),
) -> Policy:
    """``policy`` with the daemon's flags applied: they can only allow more."""
    return attrs.evolve(
        policy,
        allow_privileged=policy.allow_privileged or allow_privileged,
        allow_unconfined_seccomp=policy.allow_unconfined_seccomp or allow_unconfined,
        allow_host_network=policy.allow_host_network or allow_host_network,
        bind_mount_allow=(*policy.bind_mount_allow, *map(AbsPath, bind_mount_roots)),
        seccomp_profile_allow=(
            *policy.seccomp_profile_allow,
            *map(AbsPath, seccomp_profile_roots),
        ),
        cap_add_allow=(*policy.cap_add_allow, *map(Capability, allow_caps)),
    )
