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
    Credential,
    Duration,
    EnvName,
    FileMode,
    IPAddress,
    LabelKey,
    Name,
    Port,
    SeccompProfile,
    Size,
    Ulimit,
    UlimitName,
    VolumeSource,
)

API_VERSION = "iyclo/v1"
PullPolicy = Literal["always", "missing", "newer", "never"]


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
    source: VolumeSource = doc(
        'Absolute host path (bind mount: under the daemon\'s allowed roots, no "..", no '
        "symbolic link) or a named volume (this manifest's own, or one the daemon shares)."
    )
    target: AbsPath = doc("Mount point inside the container.")
    read_only: bool = doc("Mount read-only.", False)


@frozen
class Resources:
    cpus: float | None = doc("CPU limit in CPUs, e.g. 0.5.", None)
    memory: Size | None = doc("Memory limit, e.g. 256M.", None)
    memory_swap: Size | None = doc("Memory plus swap limit.", None)
    pids: int | None = doc("Maximum number of processes (Podman's default is 2048).", None)
    ulimits: dict[UlimitName, Ulimit] = doc(
        'POSIX resource limits, e.g. {"nofile": "1024:4096"} (soft:hard, or one number for '
        "both). Setting any replaces containers.conf's default_ulimits: Podman then raises "
        "an unset nofile or nproc to its own maximum.",
        factory=dict,
    )


@frozen
class Security:
    cap_drop: tuple[Capability, ...] = doc(
        "Capabilities to drop, beyond the ones iyclo always drops (SETPCAP, SETFCAP, "
        'SYS_CHROOT, NET_RAW, MKNOD, AUDIT_WRITE); "ALL" drops every one.',
        factory=tuple,
    )
    cap_add: tuple[Capability, ...] = doc(
        "Capabilities to add; one iyclo drops by default is kept when listed here. Any beyond "
        "Docker's default set needs the daemon's permission.",
        factory=tuple,
    )
    seccomp_profile: SeccompProfile | None = doc(
        "Seccomp profile: \"default\" (Podman's), an absolute path under the daemon's profile "
        'directories (no "..", no symbolic link), or "unconfined" (needs the daemon\'s '
        "permission).",
        None,
    )
    read_only_rootfs: bool = doc("Mount the root filesystem read-only.", False)
    read_only_tmpfs: bool = doc(
        "With readOnlyRootfs, mount writable tmpfs on /tmp, /var/tmp and /run (where no "
        "volume or tmpfs is mounted already), as `podman run --read-only` does.",
        True,
    )
    masked_paths: tuple[AbsPath, ...] = doc(
        "Paths made inaccessible in the container, in addition to Podman's defaults "
        "(/proc/keys, /sys/firmware, ...).",
        factory=tuple,
    )
    no_new_privileges: bool = doc("Forbid gaining privileges through execve.", True)
    privileged: bool = doc("Run privileged; refused unless the daemon allows it.", False)


@frozen
class UserNamespace:
    """A private user namespace for the whole pod: root inside is not root on the host."""

    host_id: int = doc(
        "First host UID and GID that container ID 0 maps to; hostId to hostId+size-1 must lie "
        "in one of the daemon's usernsRanges (by default 2147483648-4294967294)."
    )
    size: int = doc("How many IDs are mapped (container IDs 0 to size-1).", 65536)


@frozen
class Secret:
    """A secret handed to a container as a Podman secret made for its generation.

    The manifest holds only where the value is (a host file or a systemd credential); the
    daemon reads it at apply and never stores or returns it.
    """

    name: Name = doc("Secret name, unique in its container.")
    file: AbsPath | None = doc(
        "Host file holding the value, under the daemon's secretFileAllow directories (no "
        '"..", no symbolic link, a regular file of at most 512000 bytes).',
        None,
    )
    credential: Credential | None = doc(
        "systemd credential of iyclod holding the value ($CREDENTIALS_DIRECTORY/<credential>, "
        "from LoadCredential= or SetCredential= in the daemon's unit).",
        None,
    )
    env: EnvName | None = doc("Environment variable that holds the value.", None)
    target: AbsPath | None = doc("File inside the container that holds the value.", None)
    mode: FileMode | None = doc('Permissions of the target file (default "0400").', None)
    uid: int | None = doc("Owner of the target file, as a container UID (default 0).", None)
    gid: int | None = doc("Group of the target file, as a container GID (default 0).", None)


OnFailure = Literal["restart", "kill", "stop", "none"]


@frozen
class Healthcheck:
    """A probe run by Podman inside the container (the kubelet's liveness probe)."""

    command: tuple[str, ...] = doc("Command run inside the container; exit 0 is healthy.")
    interval: Duration = doc("Time between checks.", "30s")
    timeout: Duration = doc("Time a check may take.", "5s")
    retries: int = doc("Failures in a row before the container is unhealthy.", 3)
    start_period: Duration = doc("Grace period after start: failures in it do not count.", "0s")
    on_failure: OnFailure = doc(
        "What iyclo does when the container turns unhealthy: restart the pod's unit "
        "(through systemd, under the pod's restart limit, counted as healthRestarts), kill "
        "the container (the pod's restart policy decides what follows), stop the pod, or "
        "none (only report it).",
        "restart",
    )


@frozen
class StartupCheck:
    """A probe that must pass once before the healthcheck counts (the kubelet's startup
    probe): for containers slow to start, without a long start period for their lifetime."""

    command: tuple[str, ...] = doc("Command run inside the container; exit 0 has started.")
    interval: Duration = doc("Time between tries.", "1s")
    timeout: Duration = doc("Time one try may take.", "5s")
    retries: int = doc("Failed tries before the start counts as failed.", 30)
    on_failure: OnFailure = doc("What iyclo does when the start failed (as for healthcheck).",
                                "restart")  # fmt: skip


@frozen
class Container:
    name: Name = doc("Container name, unique in its pod.")
    image: str = doc("Image reference, e.g. registry.example.org/app:1.2.")
    pull_policy: PullPolicy = doc(
        "When apply pulls the image, before anything running is touched: always, missing "
        "(only when not in local storage), newer (when the registry's digest differs from "
        "the local image's) or never (a missing image is an error). Credentials come from "
        "Podman's auth file (/run/containers/0/auth.json, or REGISTRY_AUTH_FILE), never "
        "from the manifest.",
        "missing",
    )
    command: tuple[str, ...] | None = doc("Entrypoint override.", None)
    args: tuple[str, ...] | None = doc("Arguments (the image's CMD if unset).", None)
    env: dict[EnvName, str] = doc("Environment variables.", factory=dict)
    env_files: tuple[AbsPath, ...] = doc(
        "Files of NAME=VALUE lines (# comments and blank lines skipped, values taken as "
        'written), under the daemon\'s envFileAllow directories (no "..", no symbolic '
        "link): read at apply, their variables set before env's (env wins). An edited "
        "file is a new generation at the next apply; the values are never stored.",
        factory=tuple,
    )
    secrets: tuple[Secret, ...] = doc(
        "Secrets, each from a host file or a systemd credential, as a file or a variable.",
        factory=tuple,
    )
    workdir: AbsPath | None = doc("Working directory.", None)
    user: str | None = doc('User (and group) to run as, e.g. "1000:1000".', None)
    ports: tuple[PortMapping, ...] = doc("Published ports (the pod's network).", factory=tuple)
    volumes: tuple[Volume, ...] = doc("Mounts.", factory=tuple)
    tmpfs: tuple[AbsPath, ...] = doc(
        "Writable tmpfs mounts, e.g. with readOnlyRootfs.", factory=tuple
    )
    resources: Resources = doc("Resource limits applied by Podman.", factory=Resources)
    security: Security = doc("Sandboxing applied by Podman.", factory=Security)
    healthcheck: Healthcheck | None = doc(
        "Health check (liveness). A pod is ready once every container that has one is "
        "healthy; apply waits for it.",
        None,
    )
    startup_check: StartupCheck | None = doc(
        "Check that must pass once after each start before the health check counts.", None
    )
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
    """Directives systemd applies around podman: sandboxing of the unit, limits of the slice.

    The sandboxing directives apply to the unit that runs podman (and so to conmon and
    runc); only those measured to be safe around podman are accepted, see ``policy`` for
    the ones refused and why (any directive that gives the unit a private mount namespace
    hides the pod's /run/netns mount from Podman). For a pod, the resource directives
    apply to its own slice, iyclo-<name>.slice, which holds the unit *and* the
    containers' cgroups: on the unit alone they would bound only conmon (measured).
    """

    protect_clock: bool | None = doc("ProtectClock=.", None)
    restrict_realtime: bool | None = doc("RestrictRealtime=.", None)
    lock_personality: bool | None = doc("LockPersonality=.", None)
    restrict_suid_sgid: bool | None = doc("RestrictSUIDSGID=.", None)
    memory_max: Size | None = doc(
        "MemoryMax= of the pod's slice: all its containers and podman together.", None
    )
    memory_high: Size | None = doc("MemoryHigh= of the pod's slice.", None)
    cpu_quota: CPUQuota | None = doc('CPUQuota= of the pod\'s slice, e.g. "150%".', None)
    tasks_max: int | None = doc("TasksMax= of the pod's slice.", None)
    io_weight: int | None = doc("IOWeight= of the pod's slice (1-10000).", None)
    cpu_weight: int | None = doc("CPUWeight= of the pod's slice (1-10000).", None)


@frozen
class UpdateStrategy:
    """How a new generation replaces a running one, and what happens when it is not ready."""

    strategy: Literal["replace", "start-first"] = doc(
        "replace: stop the old generation, then start the new; start-first: start the new "
        "beside the old and stop the old once the new is ready (when no host port of the "
        "new is the old one's; otherwise it replaces, and says so).",
        "replace",
    )
    ready_timeout: Duration = doc(
        "How long the new generation has to become ready (every health check passing).",
        "60s",
    )
    rollback: bool = doc(
        "Restore the previous generation when the new one is not ready in time.", True
    )


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
class Dependency:
    """A pod whose start waits for another pod, as Compose's ``depends_on: condition`` does
    (the daemon waits: see ``core.ordering``)."""

    pod: Name = doc("The pod waited for (it must be applied first).")
    condition: Literal["started", "ready", "completed"] = doc(
        "started: its unit is active; ready: every health check of it passes; completed: "
        "its containers ran to completion, each with exit code 0.",
        "ready",
    )
    timeout: Duration = doc("How long a start waits for the condition before it fails.", "60s")


@frozen
class NetworkAttachment:
    """A pod's place on an iyclo network: the other pods on it reach this one by its
    aliases (aardvark-dns answers them on that network only)."""

    name: Name = doc("The Network manifest's name (it must be applied first).")
    aliases: tuple[Name, ...] = doc(
        "DNS names of this pod on that network, e.g. db.", factory=tuple
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
    networks: tuple[NetworkAttachment, ...] = doc(
        "iyclo networks (Network manifests) the pod joins instead of Podman's default "
        "bridge; a pod that publishes ports needs one that is not internal.",
        factory=tuple,
    )
    restart: Restart = doc("Restart policy, enforced by systemd.", factory=Restart)
    labels: dict[LabelKey, str] = doc("Labels set on the pod and its containers.", factory=dict)
    userns: UserNamespace | None = doc(
        "Private user namespace of the pod; the host's if unset (Podman's default).", None
    )
    systemd: SystemdSandbox = doc(
        "Sandboxing of the podman process and limits of the pod's slice.",
        factory=SystemdSandbox,
    )
    update: UpdateStrategy = doc("How updates roll out.", factory=UpdateStrategy)
    init_containers: tuple[Container, ...] = doc(
        "Containers run to completion, in order, before the pod's containers on every "
        "start (Podman's init containers); a failing one fails the start with its output.",
        factory=tuple,
    )
    depends_on: tuple[Dependency, ...] = doc(
        "Pods this pod's starts wait for (apply, start, and after a reboot).", factory=tuple
    )


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
    userns: UserNamespace | None = doc(
        "Private user namespace of the job's pod; the host's if unset (Podman's default).", None
    )
    systemd: SystemdSandbox = doc("Sandboxing of the podman process.", factory=SystemdSandbox)
    depends_on: tuple[Dependency, ...] = doc(
        "Pods each run needs running: a run fails, saying which, while one is not "
        "(condition started only: systemd starts a run without iyclod).",
        factory=tuple,
    )


@frozen
class Network:
    """A Podman network (netavark, with aardvark-dns) that pods join by name: Podman
    network iyclo-<name>, labelled as iyclo's."""

    api_version: Literal["iyclo/v1"] = doc("Manifest format version.")
    kind: Literal["Network"] = doc("Network: a network pods join.")
    name: Name = doc("Network name; the Podman network is iyclo-<name>.")
    internal: bool = doc(
        "No route out of the network (and so no published ports through it).", False
    )


Manifest = Pod | Job | Network
Workload = Pod | Job
"""A manifest that runs containers."""


def every_container(manifest: Manifest) -> list[tuple[str, Container]]:
    """Each container with its field path, a pod's init containers first (the order
    Podman makes and runs them in): what every per-container check and step goes over.
    A network has none."""
    if isinstance(manifest, Network):
        return []
    init = manifest.init_containers if isinstance(manifest, Pod) else ()
    return [
        *((f"initContainers[{i}]", c) for i, c in enumerate(init)),
        *((f"containers[{i}]", c) for i, c in enumerate(manifest.containers)),
    ]


KINDS: dict[str, type[Pod] | type[Job] | type[Network]] = {
    "Pod": Pod,
    "Job": Job,
    "Network": Network,
}
