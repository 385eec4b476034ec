"""The manifest: what a user asks iyclo to run.

Frozen attrs classes, converted by cattrs (see ``convert``); the JSON keys are the
camelCase forms of these field names. The JSON Schema is generated from these
types (see ``schema``), so the docs strings below are what ``iyclo schema`` shows.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import frozen

from iyclo.manifest.values import (
    AbsPath,
    Calendar,
    Capability,
    CPUQuota,
    Duration,
    EnvName,
    IPAddress,
    LabelKey,
    Name,
    Port,
    Size,
    VolumeSource,
)

API_VERSION = "iyclo/v1"


def doc(text: str, default: Any = attrs.NOTHING, factory: Any = None) -> Any:
    """An attrs field carrying its description for the generated schema."""
    if factory is not None:
        return attrs.field(factory=factory, metadata={"doc": text})
    return attrs.field(default=default, metadata={"doc": text})


@frozen
class PortMapping:
    container_port: Port = doc("Port the container listens on.")
    host_port: Port | None = doc("Port published on the host; none publishes nothing.", None)
    host_ip: IPAddress | None = doc("Host address to publish on; all addresses if unset.", None)
    protocol: Literal["tcp", "udp"] = doc("Transport protocol.", "tcp")


@frozen
class Volume:
    source: VolumeSource = doc("Absolute host path (bind mount) or a named volume.")
    target: AbsPath = doc("Mount point inside the container.")
    read_only: bool = doc("Mount read-only.", False)


@frozen
class Resources:
    cpus: float | None = doc("CPU limit in CPUs, e.g. 0.5.", None)
    memory: Size | None = doc("Memory limit, e.g. 256M.", None)
    memory_swap: Size | None = doc("Memory plus swap limit.", None)
    pids: int | None = doc("Maximum number of processes.", None)


@frozen
class Security:
    cap_drop: tuple[Capability, ...] = doc("Capabilities to drop.", factory=tuple)
    cap_add: tuple[Capability, ...] = doc("Capabilities to add.", factory=tuple)
    seccomp_profile: str | None = doc(
        'Seccomp profile: absolute path, "default", or "unconfined" (needs the daemon\'s '
        "permission).",
        None,
    )
    read_only_rootfs: bool = doc("Mount the root filesystem read-only.", False)
    no_new_privileges: bool = doc("Forbid gaining privileges through execve.", True)
    privileged: bool = doc("Run privileged; refused unless the daemon allows it.", False)


@frozen
class Healthcheck:
    command: tuple[str, ...] = doc("Command run inside the container; exit 0 is healthy.")
    interval: Duration = doc("Time between checks.", "30s")
    timeout: Duration = doc("Time a check may take.", "5s")
    retries: int = doc("Failures before the container is unhealthy.", 3)
    start_period: Duration = doc("Grace period after start.", "0s")


@frozen
class Container:
    name: Name = doc("Container name, unique in its pod.")
    image: str = doc("Image reference; a missing image is pulled.")
    command: tuple[str, ...] | None = doc("Entrypoint override.", None)
    args: tuple[str, ...] | None = doc("Arguments (the image's CMD if unset).", None)
    env: dict[EnvName, str] = doc("Environment variables.", factory=dict)
    workdir: AbsPath | None = doc("Working directory.", None)
    user: str | None = doc('User (and group) to run as, e.g. "1000:1000".', None)
    ports: tuple[PortMapping, ...] = doc("Published ports (the pod's network).", factory=tuple)
    volumes: tuple[Volume, ...] = doc("Mounts.", factory=tuple)
    tmpfs: tuple[AbsPath, ...] = doc(
        "Writable tmpfs mounts, e.g. with readOnlyRootfs.", factory=tuple
    )
    resources: Resources = doc("Resource limits applied by Podman.", factory=Resources)
    security: Security = doc("Sandboxing applied by Podman.", factory=Security)
    healthcheck: Healthcheck | None = doc("Health check.", None)
    stop_timeout: Duration = doc("Grace time after SIGTERM before SIGKILL on stop.", "10s")


@frozen
class Restart:
    policy: Literal["no", "on-failure", "always"] = doc(
        "When systemd restarts the pod.", "on-failure"
    )
    delay: Duration = doc("Wait before a restart (RestartSec=).", "5s")
    limit: int = doc("Restarts allowed within `window` (StartLimitBurst=).", 5)
    window: Duration = doc("Window for `limit` (StartLimitIntervalSec=).", "10min")


@frozen
class SystemdSandbox:
    """Directives systemd applies to the unit that runs podman.

    Only directives proven safe around podman are accepted; see ``policy`` for the
    ones refused and why (measured on the test host: any directive that gives the
    unit a private mount namespace hides the pod's /run/netns mount from Podman).
    """

    protect_clock: bool | None = doc("ProtectClock=.", None)
    protect_hostname: bool | None = doc("ProtectHostname=.", None)
    restrict_realtime: bool | None = doc("RestrictRealtime=.", None)
    lock_personality: bool | None = doc("LockPersonality=.", None)
    restrict_suid_sgid: bool | None = doc("RestrictSUIDSGID=.", None)
    memory_max: Size | None = doc("MemoryMax= of the whole unit.", None)
    memory_high: Size | None = doc("MemoryHigh= of the whole unit.", None)
    cpu_quota: CPUQuota | None = doc('CPUQuota= of the whole unit, e.g. "150%".', None)
    tasks_max: int | None = doc("TasksMax= of the whole unit.", None)
    io_weight: int | None = doc("IOWeight= (1-10000).", None)
    cpu_weight: int | None = doc("CPUWeight= (1-10000).", None)


@frozen
class Schedule:
    calendar: Calendar = doc('systemd calendar expression (OnCalendar=), e.g. "*-*-* 03:00".')
    persistent: bool = doc("Run once at boot if a run was missed while down.", False)
    randomized_delay: Duration | None = doc("RandomizedDelaySec=.", None)
    accuracy: Duration = doc("AccuracySec=; systemd's default of 1min is coarse.", "1s")
    timeout: Duration | None = doc("Stop a run that takes longer.", None)
    overlap: Literal["skip", "queue"] = doc(
        "A trigger while a run is going: skip or queue it.", "skip"
    )


@frozen
class Pod:
    """A long-running set of containers sharing one network namespace."""

    api_version: Literal["iyclo/v1"] = doc("Manifest format version.")
    kind: Literal["Pod"] = doc("Pod: long-running.")
    name: Name = doc("Pod name; the unit is iyclo-pod-<name>.service.")
    containers: tuple[Container, ...] = doc("The pod's containers (at least one).")
    network: Literal["bridge", "host", "none"] = doc(
        "Pod network; host needs the daemon's permission.", "bridge"
    )
    restart: Restart = doc("Restart policy, enforced by systemd.", factory=Restart)
    labels: dict[LabelKey, str] = doc("Labels set on the pod and its containers.", factory=dict)
    systemd: SystemdSandbox = doc("Sandboxing of the podman process.", factory=SystemdSandbox)


@frozen
class Job:
    """Containers run to completion on a systemd calendar schedule."""

    api_version: Literal["iyclo/v1"] = doc("Manifest format version.")
    kind: Literal["Job"] = doc("Job: run to completion on a schedule.")
    name: Name = doc("Job name; units are iyclo-job-<name>.timer/.service.")
    containers: tuple[Container, ...] = doc("The job's containers (at least one).")
    schedule: Schedule = doc("When the job runs.")
    network: Literal["bridge", "host", "none"] = doc(
        "Job network; host needs the daemon's permission.", "bridge"
    )
    labels: dict[LabelKey, str] = doc("Labels set on the pod and its containers.", factory=dict)
    systemd: SystemdSandbox = doc("Sandboxing of the podman process.", factory=SystemdSandbox)


Manifest = Pod | Job
KINDS: dict[str, type[Pod] | type[Job]] = {"Pod": Pod, "Job": Job}
