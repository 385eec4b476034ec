"""Rules that span fields, and the daemon's policy on isolation-weakening settings.

Structuring checks each value alone; these checks need the whole manifest (two
containers with one name, one host port published twice) or the daemon's
configuration (``privileged`` is refused unless the operator allowed it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from attrs import frozen

from iyclo.manifest.model import Container, Job, Pod
from iyclo.manifest.values import AbsPath, Capability

# Podman 4.3's default capability set, measured: CapEff 0x800405fb in a container.
PODMAN_DEFAULT_CAPS = frozenset(
    "CHOWN DAC_OVERRIDE FOWNER FSETID KILL NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)
# Dropped from every container unless listed in capAdd: three of Podman's defaults few
# services need (changing capability sets and file capabilities, chroot), and three that
# Docker, Podman < 4 and some containers.conf files still grant.
ALWAYS_DROPPED_CAPS = frozenset("SETPCAP SETFCAP SYS_CHROOT NET_RAW MKNOD AUDIT_WRITE".split())
# capAdd may ask for these without the daemon's permission: Docker's default set.
ADDABLE_CAPS = PODMAN_DEFAULT_CAPS | {"NET_RAW", "MKNOD", "AUDIT_WRITE"}

# Measured: `podman pod start` in a unit with its own mount namespace mounts the pod's
# network namespace under /run/netns inside that namespace only; Podman's API and CLI then
# fail on the pod ("unknown FS magic on /run/netns/...").
_MOUNT_NAMESPACE = (
    "it gives podman a private mount namespace, which hides the pod's network namespace "
    "(/run/netns) from Podman's API"
)

# Directives refused in the `systemd` block, each with the reason an operator needs.
REFUSED_SYSTEMD_DIRECTIVES: dict[str, str] = {
    "protectHome": _MOUNT_NAMESPACE,
    "privateTmp": _MOUNT_NAMESPACE,
    "protectKernelModules": _MOUNT_NAMESPACE,
    "protectKernelLogs": _MOUNT_NAMESPACE,
    "readOnlyPaths": _MOUNT_NAMESPACE,
    "inaccessiblePaths": _MOUNT_NAMESPACE,
    "privateNetwork": "it would cut podman off from the network it sets up for the pod",
    "privateDevices": "podman and runc need /dev to create container devices",
    "privateUsers": "podman needs the host's user namespace to set up containers",
    "protectSystem": "podman writes under /var/lib/containers and /etc/containers",
    "protectControlGroups": "podman creates the containers' cgroups",
    # measured: "netavark: Sysctl error: IO Error: Read-only file system"
    "protectKernelTunables": (
        "netavark writes /proc/sys (e.g. ip_forward) to set up the pod network"
    ),
    "restrictNamespaces": "containers are namespaces; podman must create them",
    "noNewPrivileges": "it would apply to podman, conmon and runc; use security.noNewPrivileges",
    "systemCallFilter": "it would filter podman itself; use security.seccompProfile",
    "capabilityBoundingSet": "podman needs its capabilities; use security.capDrop",
    "dynamicUser": "rootful podman must run as root",
    "user": "rootful podman must run as root; use a container's user instead",
    "memoryDenyWriteExecute": "it breaks runtimes that map executable memory",
    "rootDirectory": "podman must see the host's filesystem",
    # measured: "runc create failed: ... sethostname: operation not permitted" (systemd's
    # seccomp filter is inherited by runc and the containers)
    "protectHostname": "it forbids sethostname(), which runc calls to name each container",
}


@frozen
class Policy:
    """What the daemon's operator allows beyond the secure defaults.

    Read from the daemon's config file (JSON keys are the camelCase field names, under
    "policy") and its flags; see ``iyclo.config``.
    """

    allow_privileged: bool = False
    allow_unconfined_seccomp: bool = False
    allow_host_network: bool = False
    bind_mount_allow: tuple[AbsPath, ...] = (
        AbsPath("/srv"), AbsPath("/var/lib/iyclo/volumes"), AbsPath("/opt"),
    )  # fmt: skip
    seccomp_profile_allow: tuple[AbsPath, ...] = (
        AbsPath("/etc/iyclo/seccomp"), AbsPath("/var/lib/iyclo/seccomp"),
    )  # fmt: skip
    cap_add_allow: tuple[Capability, ...] = ()


DEFAULT_POLICY = Policy()
MAX_ID = 2**32 - 1  # (uid_t)-1 is "no ID"; a mapping must stay below it
UNRESTRICTED = Policy(
    allow_privileged=True,
    allow_unconfined_seccomp=True,
    allow_host_network=True,
    bind_mount_allow=(AbsPath("/"),),
    seccomp_profile_allow=(AbsPath("/"),),
    cap_add_allow=(Capability("ALL"),),
)
"""For re-reading stored manifests: they were checked when applied, and an operator who
tightens the policy later must not make the daemon unable to stop or remove them."""


def bare_capability(name: str) -> str:
    """``CAP_NET_RAW`` and ``NET_RAW`` are one capability; Podman takes either."""
    return name.removeprefix("CAP_")


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _container_problems(prefix: str, container: Container, policy: Policy) -> Iterator[str]:
    sec = container.security
    if sec.privileged and not policy.allow_privileged:
        yield (
            f"{prefix}.security.privileged: refused: "
            "the daemon does not allow privileged containers"
        )
    if sec.seccomp_profile == "unconfined" and not policy.allow_unconfined_seccomp:
        yield (
            f'{prefix}.security.seccompProfile: refused: "unconfined" is not allowed by the daemon'
        )
    elif sec.seccomp_profile not in (None, "default", "unconfined") and not str(
        sec.seccomp_profile
    ).startswith("/"):
        yield (
            f'{prefix}.security.seccompProfile: "{sec.seccomp_profile}" is not an absolute path, '
            '"default" or "unconfined"'
        )
    elif sec.seccomp_profile not in (None, "default", "unconfined") and not _under(
        str(sec.seccomp_profile), policy.seccomp_profile_allow
    ):
        # A custom profile can allow everything, so it comes only from where the operator
        # keeps reviewed ones.
        allowed = ", ".join(policy.seccomp_profile_allow)
        yield (
            f'{prefix}.security.seccompProfile: refused: "{sec.seccomp_profile}" is outside '
            f"the allowed profile directories ({allowed})"
        )
    allowed_caps = {bare_capability(c) for c in policy.cap_add_allow}
    for index, cap in enumerate(sec.cap_add):
        bare = bare_capability(cap)
        if (bare == "ALL" or bare not in ADDABLE_CAPS) and not (
            bare in allowed_caps or "ALL" in allowed_caps
        ):
            yield (
                f'{prefix}.security.capAdd[{index}]: refused: "{cap}" is beyond Docker\'s '
                "default capability set and not allowed by the daemon"
            )
    if container.command == () and container.args is None:
        yield f"{prefix}.command: must not be empty"
    if container.healthcheck is not None and not container.healthcheck.command:
        yield f"{prefix}.healthcheck.command: must not be empty"
    for index, volume in enumerate(container.volumes):
        if volume.source.startswith("/") and not _under(volume.source, policy.bind_mount_allow):
            allowed = ", ".join(policy.bind_mount_allow)
            yield (
                f'{prefix}.volumes[{index}].source: refused: host path "{volume.source}" is '
                f"outside the allowed roots ({allowed})"
            )
    res = container.resources
    if res.cpus is not None and res.cpus <= 0:
        yield f"{prefix}.resources.cpus: {res.cpus} must be greater than 0"
    if res.pids is not None and res.pids <= 0:
        yield f"{prefix}.resources.pids: {res.pids} must be greater than 0"
    targets = Counter(v.target for v in container.volumes) + Counter(container.tmpfs)
    for target, count in sorted(targets.items()):
        if count > 1:
            yield f'{prefix}.volumes: "{target}" is mounted more than once'


def problems(manifest: Pod | Job, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """Every cross-field problem of a structurally valid manifest, path-qualified."""
    found: list[str] = []
    if not manifest.containers:
        found.append("containers: a pod needs at least one container")
    names = Counter(c.name for c in manifest.containers)
    for index, container in enumerate(manifest.containers):
        prefix = f"containers[{index}]"
        if names[container.name] > 1:
            found.append(f'{prefix}.name: "{container.name}" is used by more than one container')
        found.extend(_container_problems(prefix, container, policy))
    published: dict[tuple[str, int, str], str] = {}
    for ci, container in enumerate(manifest.containers):
        for pi, port in enumerate(container.ports):
            if port.host_port is None:
                continue
            key = (port.host_ip or "0.0.0.0", port.host_port, port.protocol)
            where = f"containers[{ci}].ports[{pi}]"
            if key in published:
                found.append(
                    f"{where}.hostPort: {port.host_port}/{port.protocol} is already published "
                    f"by {published[key]}"
                )
            else:
                published[key] = where
    if manifest.network == "host" and not policy.allow_host_network:
        found.append('network: refused: "host" is not allowed by the daemon')
    if manifest.network != "bridge" and any(c.ports for c in manifest.containers):
        found.append(f'network: ports cannot be published with network "{manifest.network}"')
    if manifest.userns is not None:
        userns = manifest.userns
        if userns.host_id <= 0:
            found.append(
                f"userns.hostId: {userns.host_id} must be greater than 0 "
                "(container root would be host root)"
            )
        if userns.size <= 0:
            found.append(f"userns.size: {userns.size} must be greater than 0")
        elif userns.host_id > 0 and userns.host_id + userns.size > MAX_ID:
            found.append(
                f"userns.size: host IDs {userns.host_id}-{userns.host_id + userns.size - 1} "
                f"go beyond {MAX_ID - 1}"
            )
    sd = manifest.systemd
    if sd.io_weight is not None and not 1 <= sd.io_weight <= 10000:
        found.append(f"systemd.ioWeight: {sd.io_weight} is not in 1-10000")
    if sd.cpu_weight is not None and not 1 <= sd.cpu_weight <= 10000:
        found.append(f"systemd.cpuWeight: {sd.cpu_weight} is not in 1-10000")
    if sd.tasks_max is not None and sd.tasks_max <= 0:
        found.append(f"systemd.tasksMax: {sd.tasks_max} must be greater than 0")
    if isinstance(manifest, Pod) and manifest.restart.limit < 0:
        found.append(f"restart.limit: {manifest.restart.limit} must not be negative")
    return found
