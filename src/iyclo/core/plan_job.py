"""From a Job manifest to its Podman pod and its systemd timer + service.

Pure functions like ``plan``: the exact requests are unit-tested without a host.

The shape, and the measurements (systemd 252, Podman 4.3) behind it:

* One Podman pod per job generation (``iyclo-<name>-g<gen>``), with the same labels
  as a pod's, created at apply time and never started by the daemon. A run is the
  transient ``iyclo-job-<name>.service`` (``Type=oneshot``) whose ``ExecStart=`` lines
  are ``podman start --attach <container>``, one per container in manifest order: each
  runs to completion, its exit status becomes the command's, and the first failing
  container ends the run as failed (systemd does not run the later lines).
* The containers log with driver ``none``: the attached ``podman start`` copies their
  stdout/stderr into the unit's journal stream exactly once. With Podman's default
  ``journald`` driver every line is in the journal twice (conmon's copy and the
  attach copy); ``passthrough`` loses the output entirely under ``start --attach``.
* ``ExecStopPost=-podman pod stop`` stops the pod's infra container after every run,
  including a run systemd stops or times out. It runs under ``sh -c 'exec "$0" "$@"
  >/dev/null'`` only because it prints the pod's ID, which is not the run's output;
  its errors still reach the journal. ``KillMode=process`` as for pods: on a
  stop or timeout only the attached ``podman`` gets SIGTERM, which it proxies to the
  container; systemd never signals the conmons (``mixed``/``control-group`` can leave a
  container Podman can no longer restart).
* The transient ``iyclo-job-<name>.timer`` (created in the same ``StartTransientUnit``
  call) activates the service. A transient timer cannot name another unit (``Unit=``
  is refused over D-Bus), so the pair shares its name.

Overlap, measured: systemd never starts a second instance of an activating oneshot (a
timer elapse or a ``StartUnit`` while it runs merges into the running start job), but
the timer then computes its next elapse from its last trigger, so when a run outlasts
one or more elapses, exactly one catch-up run starts the moment it ends. That *is*
``overlap: queue`` (at most one queued run), done by systemd alone. For ``overlap:
skip`` the run's last ``ExecStopPost=`` restarts the timer (``try-restart``, so a
stopped job stays stopped; ``ignore-dependencies``, so it cannot wait on the service's
own stop job), which makes systemd schedule from "now" and forget the elapses that
fell inside the run; a persistent timer also gets its stamp file touched first, since
a restart would otherwise reload the old trigger time from it.
"""

from __future__ import annotations

import shutil
from typing import Any

from attrs import frozen

from iyclo.core import naming
from iyclo.core.plan import (
    USEC,
    ContainerPlan,
    SecretPlan,
    _container_spec,
    _pod_spec,
    hostcheck_command,
    labels_for,
    owned_volumes,
    pod_stop_timeout,
    podman_environment,
    sandbox_properties,
    secret_plans,
    slice_properties,
)
from iyclo.manifest.model import Job
from iyclo.manifest.policy import DEFAULT_POLICY, Policy
from iyclo.manifest.values import parse_duration
from iyclo.podman.execute import podman_binary
from iyclo.systemd.properties import USEC_INFINITY

TIMER_STAMP_DIR = "/var/lib/systemd/timers"
"""Where the system manager keeps a persistent timer's last trigger (``Persistent=``)."""

STOP_MARGIN_SEC = 10
"""Seconds a stopping run gets beyond its container's stop timeout, for podman itself."""


@frozen
class JobPlan:
    """Everything needed to create one generation of a job: its pod and its two units."""

    manifest: Job
    name: str
    generation: int
    digest: str
    pod_name: str
    timer: str
    service: str
    pod_spec: dict[str, Any]
    containers: tuple[ContainerPlan, ...]
    volumes: tuple[str, ...]
    timer_properties: tuple[tuple[str, Any], ...]
    service_properties: tuple[tuple[str, Any], ...]
    slice: str
    slice_properties: tuple[tuple[str, Any], ...]
    secrets: tuple[SecretPlan, ...] = ()


def systemctl_binary() -> str:
    return shutil.which("systemctl") or "/usr/bin/systemctl"


def touch_binary() -> str:
    return shutil.which("touch") or "/usr/bin/touch"


def sh_binary() -> str:
    return shutil.which("sh") or "/bin/sh"


def quiet(argv: list[str]) -> tuple[str, list[str]]:
    """``argv`` with its stdout discarded (stderr kept), as an ExecXxx= (path, argv) pair.

    The arguments stay separate words: nothing is interpolated into the script.
    """
    sh = sh_binary()
    return sh, [sh, "-c", 'exec "$0" "$@" >/dev/null', *argv]


def timer_stamp(timer: str) -> str:
    """The file systemd keeps a persistent timer's last trigger time in (its mtime)."""
    return f"{TIMER_STAMP_DIR}/stamp-{timer}"


def job_timer_properties(manifest: Job) -> list[tuple[str, Any]]:
    schedule = manifest.schedule
    props: list[tuple[str, Any]] = [
        ("Description", f"iyclo job {manifest.name} schedule"),
        ("OnCalendar", schedule.calendar),
        ("Persistent", schedule.persistent),
        ("AccuracyUSec", parse_duration(schedule.accuracy)),
        # The default, spelled out: a calendar with a last elapse (a single date) keeps its
        # timer, and so the service and its last result, loaded after that elapse.
        ("RemainAfterElapse", True),
        # `overlap: skip` restarts the timer before and after every run (``skip_rearm``):
        # a 3 s calendar makes ~7 restarts in 10 s, and systemd's default start limit (5 in
        # 10 s) then fails the timer with start-limit-hit (measured on systemd 252). Those
        # restarts are ours; the schedule is what limits how often a job runs.
        ("StartLimitIntervalUSec", 0),
    ]
    if schedule.randomized_delay:
        props.append(("RandomizedDelayUSec", parse_duration(schedule.randomized_delay)))
    return props


def skip_rearm(manifest: Job, timer: str) -> list[tuple[str, list[str], bool]]:
    """The commands that make the timer forget the elapses that fall inside a run.

    Run both before and after each run, because systemd changed what a restarted timer
    counts from (measured with a 4 s run on a 3 s calendar, 6 runs each): systemd 252
    restarts a timer from "now" but still holds an elapse that fell inside the run, so
    only a restart *after* the run drops it; systemd 257 restarts a timer from its last
    trigger, so after the run that trigger already lies in the past and the restart fires
    at once (a catch-up run, sometimes), while a restart *at the start* of the run, from
    the trigger that started it, leaves the elapse inside the run to merge into the running
    start job. Each restart is harmless on the other version. A persistent timer keeps its
    last trigger in its stamp file, which a restart reloads: touch it first.
    """
    commands: list[tuple[str, list[str], bool]] = []
    if manifest.schedule.persistent:
        touch = touch_binary()
        commands.append((touch, [touch, timer_stamp(timer)], True))
    systemctl = systemctl_binary()
    commands.append(
        (systemctl, [systemctl, "try-restart", "--no-ask-password",
                     "--job-mode=ignore-dependencies", timer], True)
    )  # fmt: skip
    return commands


def job_service_properties(
    manifest: Job, pod_name: str, service: str, timer: str, policy: Policy = DEFAULT_POLICY
) -> list[tuple[str, Any]]:
    """The oneshot that is one run: each container in order, each to completion.

    With host paths, ``hostcheck_command`` comes first: the timer starts runs without
    the daemon, and a path changed into a symbolic link since the last check fails the
    run (its journal says why) before any container starts.
    """
    podman = podman_binary()
    grace = pod_stop_timeout(manifest)
    start = [
        (podman, [podman, "start", "--attach", naming.container_name(pod_name, c.name)], False)
        for c in manifest.containers
    ]
    stop_pod = quiet([podman, "pod", "stop", "--ignore", f"--time={grace}", pod_name])
    stop_post: list[tuple[str, list[str], bool]] = [(*stop_pod, True)]
    hostcheck = hostcheck_command(manifest, policy)
    start_pre: list[tuple[str, list[str], bool]] = [hostcheck] if hostcheck else []
    start_pre.extend(dependency_checks(manifest))
    if manifest.schedule.overlap == "skip":
        rearm = skip_rearm(manifest, timer)
        start_pre.extend(rearm)
        stop_post.extend(rearm)
    timeout = manifest.schedule.timeout
    props: list[tuple[str, Any]] = [
        ("Description", f"iyclo job {manifest.name}"),
        # The job's own slice holds its service and its containers, so the limits of
        # the `systemd` block (set on the slice) bound the run, not only conmon.
        ("Slice", naming.slice_name(manifest.name)),
        ("Type", "oneshot"),
        *([("ExecStartPre", start_pre)] if start_pre else []),
        ("ExecStart", start),
        ("ExecStopPost", stop_post),
        ("KillMode", "process"),
        # A oneshot has no start timeout unless given one; the manifest's is the run's.
        ("TimeoutStartUSec", parse_duration(timeout) if timeout else USEC_INFINITY),
        ("TimeoutStopUSec", (grace + STOP_MARGIN_SEC) * USEC),
        # The schedule decides how often a job runs, not systemd's start rate limit
        # (5 starts in 10 s would stop a 1-second calendar and fail its timer).
        ("StartLimitIntervalUSec", 0),
        # Kept while the timer exists (it references the service), so the last run's
        # result stays readable; collected together with the timer, even after a failure.
        ("CollectMode", "inactive-or-failed"),
        ("Environment", podman_environment(service)),
    ]
    props.extend(sandbox_properties(manifest.systemd, resources=False))
    return props


DEPENDENCY_CHECK = (
    'systemctl is-active --quiet "$1" || '
    '{ echo "iyclo: pod $2 is not running (dependsOn)" >&2; exit 1; }'
)


def dependency_checks(manifest: Job) -> list[tuple[str, list[str], bool]]:
    """ExecStartPre= lines that fail a run while a pod it depends on is not running, with
    a line saying so in the run's journal (the run's error).

    Not ``After=``/``Requisite=``: a unit another unit names stays loaded after its stop
    (measured on systemd 252: ``iyclo stop db`` then timed out waiting for the transient
    unit to go), so the pod's unit could not be made again under its name."""
    return [
        ("/bin/sh", ["/bin/sh", "-c", DEPENDENCY_CHECK, "dependsOn",
                     naming.unit_name("Pod", d.pod), d.pod], False)
        for d in manifest.depends_on
    ]  # fmt: skip


def plan_job(
    manifest: Job, generation: int, digest: str, *, policy: Policy = DEFAULT_POLICY
) -> JobPlan:
    """One generation of a job; ``policy`` gives the roots its host check checks against."""
    pod_name = naming.podman_pod_name(manifest.name, generation)
    timer = naming.unit_name("Job", manifest.name, "timer")
    service = naming.unit_name("Job", manifest.name)
    labels = labels_for(manifest, generation, digest)
    containers = tuple(
        ContainerPlan(
            name=c.name,
            image=c.image,
            spec={
                **_container_spec(pod_name, c, labels, main=False),
                "log_config": {"Type": "none"},
            },
            pull_policy=c.pull_policy,
        )
        for c in manifest.containers
    )
    return JobPlan(
        manifest=manifest,
        name=manifest.name,
        generation=generation,
        digest=digest,
        pod_name=pod_name,
        timer=timer,
        service=service,
        pod_spec=_pod_spec(
            manifest, labels, pod_name, cgroup_parent=naming.slice_name(manifest.name)
        ),
        containers=containers,
        volumes=owned_volumes(manifest, policy),
        timer_properties=tuple(job_timer_properties(manifest)),
        service_properties=tuple(
            job_service_properties(manifest, pod_name, service, timer, policy)
        ),
        slice=naming.slice_name(manifest.name),
        slice_properties=tuple(slice_properties(manifest.systemd)),
        secrets=secret_plans(manifest, pod_name, labels),
    )
