"""From a manifest to what Podman and systemd are asked for.

Pure functions: no I/O, so the exact requests are unit-tested without a host,
and the adapters stay thin.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from attrs import frozen

from iyclo.core import naming
from iyclo.core.secrets import secret_sources
from iyclo.manifest.model import (
    Container,
    Job,
    Pod,
    PullPolicy,
    Resources,
    Secret,
    Security,
    SystemdSandbox,
    every_container,
)
from iyclo.manifest.policy import (
    ALWAYS_DROPPED_CAPS,
    DEFAULT_POLICY,
    VOLUME_OWNER_LABEL,
    Policy,
    bare_capability,
    host_paths,
    volume_claims,
)
from iyclo.manifest.values import (
    parse_cpu_quota,
    parse_duration,
    parse_file_mode,
    parse_size,
    parse_ulimit,
)
from iyclo.podman.execute import podman_binary

USEC = 1_000_000
CPU_PERIOD_USEC = 100_000
UNSET = 2**64 - 1
"""systemd's "infinity" for limits and "[not set]" for weights, as a ``t`` property."""
SECRET_MODE = "0400"
"""A secret file's mode unless the manifest says otherwise: readable by its owner only."""
READ_ONLY_TMPFS = ("/tmp", "/var/tmp", "/run")
"""Writable tmpfs a read-only container gets, as `podman run --read-only` gives them (the
REST API does not: measured on Podman 4.3, /tmp stayed read-only)."""


@frozen
class ContainerPlan:
    name: str
    image: str
    spec: dict[str, Any]
    pull_policy: PullPolicy = "missing"


@frozen
class SecretPlan:
    """One Podman secret of a generation: its name, labels, and where its value is read."""

    name: str
    where: str
    """The secret's field path in the manifest, e.g. "containers[0].secrets[1]"."""
    container: str
    secret: Secret
    labels: dict[str, str]


@frozen
class PodPlan:
    """Everything needed to create one generation of a pod and its unit."""

    manifest: Pod
    name: str
    kind: str
    generation: int
    digest: str
    pod_name: str
    unit: str
    slice: str
    pod_spec: dict[str, Any]
    containers: tuple[ContainerPlan, ...]
    volumes: tuple[str, ...]
    unit_properties: tuple[tuple[str, Any], ...]
    slice_properties: tuple[tuple[str, Any], ...]
    secrets: tuple[SecretPlan, ...] = ()


HOSTCHECK_MODULE = "iyclo.manifest.hostcheck"


def python_binary() -> str:
    """The daemon's own interpreter: the one that has this iyclo importable, wherever it
    was installed (a virtualenv, a prefix, a checkout whose path has spaces)."""
    return sys.executable or shutil.which("python3") or "/usr/bin/python3"


def hostcheck_command(
    manifest: Pod | Job, policy: Policy, python: str | None = None
) -> tuple[str, list[str], bool] | None:
    """The ExecStartPre= that checks the manifest's host paths again at every start
    systemd makes on its own (a job's timer, ``Restart=``), or None without host paths.

    ``-I``: the unit's environment and working directory cannot change which code runs
    as root. One ``--x=value`` word per option: no path can be read as an option, and the
    argv reaches systemd word by word, so spaces need no quoting. Fails the start (not
    ignored, no ``-``) with one journal line per refused path (``manifest.hostcheck``).
    """
    paths = host_paths(manifest)
    if not paths:
        return None
    python = python or python_binary()
    argv = [python, "-I", "-m", HOSTCHECK_MODULE]
    if any(not path.profile for path in paths):
        argv += [f"--root={root}" for root in policy.bind_mount_allow]
    if any(path.profile for path in paths):
        argv += [f"--profile-root={root}" for root in policy.seccomp_profile_allow]
    argv += [f"--{'profile' if p.profile else 'bind'}={p.path}" for p in paths]
    return python, argv, False


def labels_for(manifest: Pod | Job, generation: int, digest: str) -> dict[str, str]:
    return {
        **{str(key): value for key, value in manifest.labels.items()},
        naming.LABEL_POD: manifest.name,
        naming.LABEL_KIND: manifest.kind,
        naming.LABEL_GENERATION: str(generation),
        naming.LABEL_HASH: digest,
    }


def owned_volumes(manifest: Pod | Job, policy: Policy) -> tuple[str, ...]:
    """The named volumes that are the manifest's own (the operator shares none of them):
    the core makes each that is missing, before the containers, with ``volume_labels``.
    Podman would make it at container creation too, but unlabelled: owned by nobody."""
    return tuple(dict.fromkeys(c.name for c in volume_claims(manifest, policy) if not c.shared))


def volume_labels(manifest: Pod | Job) -> dict[str, str]:
    """A volume's owner (``VOLUME_OWNER_LABEL``, which ``policy.volume_problem`` reads) and
    iyclo's labels of who made it. No generation: a volume outlives generations, and the
    pod itself (``iyclo rm`` keeps it, as Docker and Podman do)."""
    return {
        VOLUME_OWNER_LABEL: manifest.name,
        naming.LABEL_POD: manifest.name,
        naming.LABEL_KIND: manifest.kind,
    }


def secret_labels(labels: dict[str, str]) -> dict[str, str]:
    """iyclo's own labels of a generation, which its secrets carry (no user labels: a
    secret is iyclo's, and its labels are how reconcile finds the ones left over)."""
    keys = (naming.LABEL_POD, naming.LABEL_KIND, naming.LABEL_GENERATION)
    return {key: labels[key] for key in keys}


def secret_plans(
    manifest: Pod | Job, pod_name: str, labels: dict[str, str]
) -> tuple[SecretPlan, ...]:
    """Each container's secrets as the Podman secrets made for the generation ``pod_name``."""
    own = secret_labels(labels)
    return tuple(
        SecretPlan(
            name=naming.secret_name(pod_name, container, secret.name),
            where=where,
            container=container,
            secret=secret,
            labels={**own, naming.LABEL_CONTAINER: container},
        )
        for where, container, secret in secret_sources(manifest)
    )


def _secret_spec(pod_name: str, container: Container) -> dict[str, Any]:
    """specgen's ``secrets`` (a file) and ``secret_env`` (a variable) of a container, each
    naming the generation's Podman secret; the value itself is never in a spec."""
    files: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    for secret in container.secrets:
        source = naming.secret_name(pod_name, container.name, secret.name)
        if secret.env is not None:
            env[secret.env] = source
        else:
            files.append(
                {"source": source, "target": secret.target,
                 "mode": parse_file_mode(secret.mode or SECRET_MODE),
                 "uid": secret.uid or 0, "gid": secret.gid or 0}
            )  # fmt: skip
    spec: dict[str, Any] = {}
    if files:
        spec["secrets"] = files
    if env:
        spec["secret_env"] = env
    return spec


def _seconds(duration: str) -> int:
    return max(0, round(parse_duration(duration) / USEC))


def pod_stop_timeout(manifest: Pod | Job) -> int:
    """The pod stops in parallel, so it needs the longest grace of its containers."""
    return max(_seconds(c.stop_timeout) for c in manifest.containers)


def capabilities(sec: Security) -> tuple[list[str], list[str]]:
    """(cap_drop, cap_add) for Podman: the manifest's, plus iyclo's baseline drops.

    A baseline capability listed in capAdd is kept (the way to re-grant it); a privileged
    container gets no baseline drops, since the operator allowed it everything.
    """
    adds = list(dict.fromkeys(bare_capability(c) for c in sec.cap_add))
    drops = {bare_capability(c) for c in sec.cap_drop}
    if "ALL" in drops:
        return ["ALL"], adds
    if not sec.privileged:
        drops |= ALWAYS_DROPPED_CAPS - set(adds)
    return sorted(drops), adds


def _container_spec(
    pod_name: str, container: Container, labels: dict[str, str], main: bool, init: bool = False
) -> dict[str, Any]:
    name = naming.container_name(pod_name, container.name)
    spec: dict[str, Any] = {
        "image": container.image,
        "name": name,
        "pod": pod_name,
        "labels": {**labels, naming.LABEL_CONTAINER: container.name},
        "stop_timeout": _seconds(container.stop_timeout),
    }
    if init:
        # Podman's own init containers (4.0+): `pod start` runs them to completion, one
        # after another in the order they were made, before the others; one that fails
        # fails the start, so systemd's start of the unit fails with its output.
        spec["init_container_type"] = "always"
    if main:
        # The unit's main PID: systemd sees the main container's exit status through it.
        spec["conmon_pid_file"] = naming.pid_file(name)
    if container.command is not None:
        spec["entrypoint"] = list(container.command)
    if container.args is not None:
        spec["command"] = list(container.args)
    if container.env:
        spec["environment"] = dict(container.env)
    spec.update(_secret_spec(pod_name, container))
    if container.workdir:
        spec["working_dir"] = container.workdir
    if container.user:
        spec["user"] = container.user
    sec = container.security
    cap_drop, cap_add = capabilities(sec)
    if cap_drop:
        spec["cap_drop"] = cap_drop
    if cap_add:
        spec["cap_add"] = cap_add
    spec["no_new_privileges"] = sec.no_new_privileges
    if sec.masked_paths:
        spec["masked_paths"] = list(sec.masked_paths)
    if sec.read_only_rootfs:
        spec["read_only"] = True
    if sec.privileged:
        spec["privileged"] = True
    if sec.seccomp_profile not in (None, "default"):
        spec["seccomp_profile_path"] = sec.seccomp_profile
    res = container.resources
    update = container_update_resources(res)
    memory = update.get("memory", {})
    if "limit" in memory:
        spec["mem_limit"] = memory["limit"]
    if "swap" in memory:
        spec["memswap_limit"] = memory["swap"]
    if "cpu" in update:
        spec["cpu_period"] = update["cpu"]["period"]
        spec["cpu_quota"] = update["cpu"]["quota"]
    if "pids" in update:
        spec["pids_limit"] = update["pids"]["limit"]
    if res.ulimits:
        spec["ulimits"] = [
            {"Name": name, "Soft": soft, "Hard": hard}
            for name, (soft, hard) in sorted(
                (name, parse_ulimit(value)) for name, value in res.ulimits.items()
            )
        ]
    mounts: list[dict[str, Any]] = []
    volumes: dict[str, dict[str, Any]] = {}
    for volume in container.volumes:
        if volume.source.startswith("/"):
            mounts.append(
                {"type": "bind", "source": volume.source, "target": volume.target,
                 "read_only": volume.read_only}
            )  # fmt: skip
        else:
            volumes[volume.source] = {
                "bind": volume.target,
                "mode": "ro" if volume.read_only else "rw",
            }
    tmpfs: list[str] = list(container.tmpfs)
    if sec.read_only_rootfs and sec.read_only_tmpfs:
        taken = {v.target for v in container.volumes} | set(tmpfs)
        tmpfs += [target for target in READ_ONLY_TMPFS if target not in taken]
    for target in tmpfs:
        mounts.append({"type": "tmpfs", "source": "tmpfs", "target": target})
    if mounts:
        spec["mounts"] = mounts
    if volumes:
        spec["volumes"] = volumes
    if container.healthcheck:
        hc = container.healthcheck
        spec["healthcheck"] = {
            "Test": ["CMD", *hc.command],
            "Interval": parse_duration(hc.interval) * 1000,
            "Timeout": parse_duration(hc.timeout) * 1000,
            "Retries": hc.retries,
            "StartPeriod": parse_duration(hc.start_period) * 1000,
        }
    return spec


def container_update_resources(res: Resources) -> dict[str, Any]:
    """A container's limits as the OCI LinuxResources that `podman update` takes: the one
    place they are computed, for creating a container and for changing a running one."""
    update: dict[str, Any] = {}
    if res.memory:
        update["memory"] = {"limit": parse_size(res.memory)}
        if res.memory_swap:
            update["memory"]["swap"] = parse_size(res.memory_swap)
    elif res.memory_swap:
        update["memory"] = {"swap": parse_size(res.memory_swap)}
    if res.cpus:
        update["cpu"] = {"period": CPU_PERIOD_USEC, "quota": int(res.cpus * CPU_PERIOD_USEC)}
    if res.pids:
        update["pids"] = {"limit": res.pids}
    return update


def _pod_spec(
    manifest: Pod | Job, labels: dict[str, str], pod_name: str, cgroup_parent: str
) -> dict[str, Any]:
    portmappings = [
        {
            "container_port": port.container_port,
            "host_port": port.host_port,
            "protocol": port.protocol,
            **({"host_ip": port.host_ip} if port.host_ip else {}),
        }
        for container in manifest.containers
        for port in container.ports
        if port.host_port is not None
    ]
    spec: dict[str, Any] = {
        "labels": labels,
        "infra_conmon_pid_file": naming.pid_file(pod_name),
        "cgroup_parent": cgroup_parent,
        "netns": {"nsmode": manifest.network},
    }
    if portmappings:
        spec["portmappings"] = portmappings
    if isinstance(manifest, Pod) and manifest.networks:
        # The infra container joins them, so the whole pod does; aliases are per
        # attachment (libpod's PerNetworkOptions), answered by aardvark-dns on that
        # network only. The key is specgen's Go field name (it has no JSON tag).
        spec["Networks"] = {
            naming.network_name(n.name): {"aliases": list(n.aliases)} for n in manifest.networks
        }
    if manifest.userns is not None:
        # Pod-wide: Podman 4.3 refuses a container's own ID map inside a pod with an infra
        # container ("cannot specify a new uid/gid map when entering a pod").
        ids = [{"container_id": 0, "host_id": manifest.userns.host_id,
                "size": manifest.userns.size}]  # fmt: skip
        spec["userns"] = {"nsmode": "private"}
        spec["idmappings"] = {"UIDMap": ids, "GIDMap": ids}
    return spec


def sandbox_properties(block: SystemdSandbox, *, resources: bool = True) -> list[tuple[str, Any]]:
    """systemd directives of the manifest's `systemd` block, as unit properties.

    With ``resources=False`` only the sandboxing directives: a pod's resource limits go
    on its slice (`slice_properties`), since its containers' cgroups are not in its unit.
    """
    props: list[tuple[str, Any]] = []
    flags = {
        "ProtectClock": block.protect_clock,
        "RestrictRealtime": block.restrict_realtime,
        "LockPersonality": block.lock_personality,
        "RestrictSUIDSGID": block.restrict_suid_sgid,
    }
    props.extend((key, value) for key, value in flags.items() if value is not None)
    if not resources:
        return props
    if block.memory_max:
        props.append(("MemoryMax", parse_size(block.memory_max)))
    if block.memory_high:
        props.append(("MemoryHigh", parse_size(block.memory_high)))
    if block.cpu_quota:
        props.append(("CPUQuotaPerSecUSec", int(parse_cpu_quota(block.cpu_quota) * USEC)))
    if block.tasks_max is not None:
        props.append(("TasksMax", block.tasks_max))
    if block.io_weight is not None:
        props.append(("IOWeight", block.io_weight))
    if block.cpu_weight is not None:
        props.append(("CPUWeight", block.cpu_weight))
    return props


def slice_properties(block: SystemdSandbox) -> list[tuple[str, Any]]:
    """Every resource property of a pod's slice; one not in the manifest is systemd's
    "no limit", so the same list creates the slice and, set again on a running one,
    also lifts a limit the new manifest dropped."""

    def size(value: str | None) -> int:
        return parse_size(value) if value else UNSET

    quota = block.cpu_quota
    return [
        ("MemoryMax", size(block.memory_max)),
        ("MemoryHigh", size(block.memory_high)),
        ("CPUQuotaPerSecUSec", int(parse_cpu_quota(quota) * USEC) if quota else UNSET),
        ("TasksMax", UNSET if block.tasks_max is None else block.tasks_max),
        ("IOWeight", UNSET if block.io_weight is None else block.io_weight),
        ("CPUWeight", UNSET if block.cpu_weight is None else block.cpu_weight),
    ]


def podman_environment(unit: str) -> list[str]:
    """The environment of the podman commands a unit runs.

    PODMAN_SYSTEMD_UNIT tells Podman which unit supervises the containers. Podman 5 warns
    at every call on a cgroup v1 host that v1 is deprecated; in the unit's journal that
    line would stand before, and be read as, the start's real error.
    """
    return [f"PODMAN_SYSTEMD_UNIT={unit}", "PODMAN_IGNORE_CGROUPSV1_WARNING=1"]


def pod_unit_properties(
    manifest: Pod, pod_name: str, unit: str, policy: Policy = DEFAULT_POLICY
) -> list[tuple[str, Any]]:
    """A transient service that systemd launches, watches and restarts, as Quadlet would.

    With host paths, ``hostcheck_command`` runs first at every start, ``Restart=``'s
    included. A refused start is a failed start: systemd retries it after ``RestartSec=``
    like a crash, each retry refused again, until the pod's own start limit
    (``restart.limit`` in ``restart.window``) leaves the unit failed: measured on systemd
    252 with limit 3, three refused restarts, then ``failed`` with result ``exit-code``.
    (``RestartPreventExitStatus=`` would not stop the retries: systemd.service(5) applies
    it to the main process's exit status, and a refused ExecStartPre= starts none.)
    """
    podman = podman_binary()
    hostcheck = hostcheck_command(manifest, policy)
    main_container = naming.container_name(pod_name, manifest.containers[0].name)
    grace = pod_stop_timeout(manifest)
    stop = [podman, "pod", "stop", "--ignore", f"--time={grace}", pod_name]
    restart = manifest.restart
    props: list[tuple[str, Any]] = [
        ("Description", f"iyclo pod {manifest.name}"),
        ("Slice", naming.slice_name(manifest.name)),
        ("Type", "forking"),
        ("PIDFile", naming.pid_file(main_container)),
        *([("ExecStartPre", [hostcheck])] if hostcheck else []),
        ("ExecStart", [(podman, [podman, "pod", "start", pod_name], False)]),
        ("ExecStop", [(podman, stop, False)]),
        ("ExecStopPost", [(podman, stop, True)]),
        # Not "mixed": when the main container dies, systemd would SIGKILL the other
        # conmons and leave Podman's containers stuck "stopping", so no restart could
        # start them. ExecStop/ExecStopPost stop the whole pod through Podman instead.
        ("KillMode", "process"),
        ("Restart", restart.policy),
        ("RestartUSec", parse_duration(restart.delay)),
        ("StartLimitBurst", restart.limit),
        ("StartLimitIntervalUSec", parse_duration(restart.window)),
        ("TimeoutStartUSec", 120 * USEC),
        ("TimeoutStopUSec", (grace + 30) * USEC),
        ("Environment", podman_environment(unit)),
    ]
    props.extend(sandbox_properties(manifest.systemd, resources=False))
    return props


def plan_pod(
    manifest: Pod,
    generation: int,
    digest: str,
    *,
    pod_generation: int | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> PodPlan:
    """One generation of a pod. ``pod_generation`` names the Podman pod it runs in when
    that is an earlier generation's, kept by an update in place (see ``core.update``);
    ``policy`` gives the allowed roots its unit's host check checks against."""
    pod_generation = pod_generation or generation
    pod_name = naming.podman_pod_name(manifest.name, pod_generation)
    unit = naming.unit_name("Pod", manifest.name)
    slice_ = naming.slice_name(manifest.name)
    labels = labels_for(manifest, pod_generation, digest)
    main = manifest.containers[0].name
    containers = tuple(
        ContainerPlan(
            name=c.name,
            image=c.image,
            spec=_container_spec(pod_name, c, labels, main=c.name == main,
                                 init=where.startswith("init")),
            pull_policy=c.pull_policy,
        )
        for where, c in every_container(manifest)
    )  # fmt: skip
    return PodPlan(
        manifest=manifest,
        name=manifest.name,
        kind=manifest.kind,
        generation=generation,
        digest=digest,
        pod_name=pod_name,
        unit=unit,
        slice=slice_,
        pod_spec=_pod_spec(manifest, labels, pod_name, cgroup_parent=slice_),
        containers=containers,
        volumes=owned_volumes(manifest, policy),
        unit_properties=tuple(pod_unit_properties(manifest, pod_name, unit, policy)),
        slice_properties=tuple(slice_properties(manifest.systemd)),
        secrets=secret_plans(manifest, pod_name, labels),
    )
