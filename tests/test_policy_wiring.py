"""The policy holds at every start, not only at apply (issue #11): the core checks the host
paths again before each start it makes, and the units it writes check them before each
start systemd makes on its own (ExecStartPre=). Against the fakes; the real thing is in
``test_policy_host.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import DBusError

from iyclo.core.plan import HOSTCHECK_MODULE, hostcheck_command, plan_pod
from iyclo.core.plan_job import plan_job
from iyclo.errors import InvalidError, PodmanError, SystemdError
from iyclo.manifest.convert import parse_manifest
from iyclo.manifest.model import Job, Pod
from iyclo.manifest.policy import Policy
from iyclo.manifest.values import AbsPath, VolumeName
from tests.fakes.fixtures import Core

BUSYBOX = "localhost/busybox:latest"


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """The allowed bind-mount root of these tests, with a directory a pod mounts from."""
    root = tmp_path / "srv"
    (root / "x" / "data").mkdir(parents=True)
    return root


@pytest.fixture
def policy(srv: Path) -> Policy:
    """Overrides ``tests.fakes.fixtures.policy``: the daemon allows binds under ``srv``
    and shares the named volume "common"."""
    return Policy(bind_mount_allow=(AbsPath(str(srv)),), shared_volumes=(VolumeName("common"),))


def plant_link(srv: Path) -> str:
    """What a container that may write under the root does: ``x`` becomes a link to /.
    Returns the refusal's line for ``x/data``."""
    (srv / "x" / "data").rmdir()
    (srv / "x").rmdir()
    (srv / "x").symlink_to("/")
    return (
        f'containers[0].volumes[0].source: refused: "{srv}/x/data" goes through the '
        f'symbolic link "{srv}/x"'
    )


def manifest(kind: str, name: str, srv: Path, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "iyclo/v1", "kind": kind, "name": name,
        "containers": [{"name": "main", "image": BUSYBOX, "command": ["true"],
                        "volumes": [{"source": f"{srv}/x/data", "target": "/data"}]}],
        **extra,
    }  # fmt: skip
    if kind == "Job":
        data["schedule"] = {"calendar": "*-01-01 00:00:00"}
    return data


# -- the units' ExecStartPre= ---------------------------------------------------------------


def test_a_pod_with_host_paths_checks_them_before_every_start(policy: Policy, srv: Path) -> None:
    data = manifest("Pod", "guarded", srv)
    data["containers"][0]["security"] = {"seccompProfile": "/etc/iyclo/seccomp/a b.json"}
    pod = parse_manifest(data, Policy(bind_mount_allow=policy.bind_mount_allow))
    assert isinstance(pod, Pod)
    props = dict(plan_pod(pod, 1, "d", policy=policy).unit_properties)
    ((path, argv, ignore),) = props["ExecStartPre"]
    assert (path, ignore) == (sys.executable, False)
    assert argv == [
        sys.executable, "-I", "-m", HOSTCHECK_MODULE, f"--root={srv}",
        "--profile-root=/etc/iyclo/seccomp", "--profile-root=/var/lib/iyclo/seccomp",
        f"--bind={srv}/x/data", "--profile=/etc/iyclo/seccomp/a b.json",
    ]  # fmt: skip
    keys = [key for key, _ in plan_pod(pod, 1, "d", policy=policy).unit_properties]
    assert keys.index("ExecStartPre") < keys.index("ExecStart")


def test_without_host_paths_there_is_nothing_to_check() -> None:
    pod = parse_manifest(
        {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "plain",
         "containers": [{"name": "main", "image": BUSYBOX, "command": ["true"]}]}
    )  # fmt: skip
    assert isinstance(pod, Pod)
    assert "ExecStartPre" not in dict(plan_pod(pod, 1, "d").unit_properties)
    assert hostcheck_command(pod, Policy()) is None


def test_the_interpreter_may_live_under_a_path_with_spaces(policy: Policy, srv: Path) -> None:
    """One argv word per argument over D-Bus: nothing is split or needs quoting."""
    pod = parse_manifest(manifest("Pod", "spaced", srv), policy)
    command = hostcheck_command(pod, policy, python="/opt/my tools/venv/bin/python3")
    assert command is not None
    assert command[0] == "/opt/my tools/venv/bin/python3"
    assert command[1][:2] == ["/opt/my tools/venv/bin/python3", "-I"]


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_job_run_checks_its_host_paths_first(policy: Policy, srv: Path, overlap: str) -> None:
    data = manifest("Job", "guarded-job", srv)
    data["schedule"]["overlap"] = overlap
    job = parse_manifest(data, policy)
    assert isinstance(job, Job)
    props = dict(plan_job(job, 1, "d", policy=policy).service_properties)
    first = props["ExecStartPre"][0]
    assert first == hostcheck_command(job, policy)
    assert len(props["ExecStartPre"]) == (1 if overlap == "queue" else 2)


def test_the_units_check_refuses_a_planted_link_in_one_line(policy: Policy, srv: Path) -> None:
    """The very argv the unit gets, run here: exit 1 and a line naming the path."""
    pod = parse_manifest(manifest("Pod", "linked", srv), policy)
    command = hostcheck_command(pod, policy)
    assert command is not None
    ok = subprocess.run(command[1], capture_output=True, text=True, check=False, timeout=60)
    assert (ok.returncode, ok.stderr) == (0, "")
    plant_link(srv)
    refused = subprocess.run(command[1], capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr == (
        f'iyclo-hostcheck: {srv}/x/data: refused: "{srv}/x/data" goes through the symbolic '
        f'link "{srv}/x"\n'
    )


# -- the core, before each start it makes ---------------------------------------------------


def starts(core: Core) -> int:
    """How many starts the core asked systemd for, of any kind."""
    return sum(
        len(core.systemd.calls[m])
        for m in ("StartTransientUnit", "StartUnit", "RestartUnit", "TryRestartUnit")
    )


async def test_a_pod_is_not_started_again_through_a_planted_link(core: Core, srv: Path) -> None:
    service = core.service
    await service.apply(manifest("Pod", "linked", srv))
    line = plant_link(srv)
    before = starts(core)
    with pytest.raises(InvalidError) as info:
        await service.restart("linked")
    assert info.value.details == [line]
    assert info.value.message == line
    assert starts(core) == before  # restart refused while it ran: it still runs, unchanged
    assert await service.start("linked") == "running"  # it runs: no start to refuse
    assert (await service.status("linked"))["state"] == "running"
    # its unit gone behind the daemon's back (a reboot): the reconcile does not re-create it
    await service.steps.stop("iyclo-pod-linked.service")
    report = await service.reconcile()
    assert report.failed == (("linked", line),)
    assert starts(core) == before
    await service.stop("linked")
    with pytest.raises(InvalidError) as info:
        await service.start("linked")
    assert info.value.details == [line]
    assert starts(core) == before


async def test_a_job_is_not_run_through_a_planted_link(core: Core, srv: Path) -> None:
    service = core.service
    await service.apply(manifest("Job", "linked-job", srv))
    line = plant_link(srv)
    before = starts(core)
    for operation in (service.run_job, service.restart):
        with pytest.raises(InvalidError) as info:
            await operation("linked-job")
        assert info.value.details == [line]
    assert starts(core) == before
    assert await service.runs("linked-job") == []


# -- what a manifest claims on the host beyond its name ------------------------------------


def with_userns(kind: str, name: str, host_id: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "iyclo/v1", "kind": kind, "name": name,
        "userns": {"hostId": host_id, "size": 65536},
        "containers": [{"name": "main", "image": BUSYBOX, "command": ["true"]}],
    }  # fmt: skip
    if kind == "Job":
        data["schedule"] = {"calendar": "*-01-01 00:00:00"}
    return data


async def test_an_overlapping_user_namespace_is_refused_and_nothing_made(core: Core) -> None:
    service = core.service
    await service.apply(with_userns("Pod", "first", 2**31))
    pods, started = dict(core.podman.pods), starts(core)
    for kind in ("Pod", "Job"):
        with pytest.raises(InvalidError) as info:
            await service.apply(with_userns(kind, "second", 2**31 + 65535))
        assert info.value.details == [
            'userns.hostId: refused: host IDs 2147549183-2147614718 overlap those of "first" '
            "(2147483648-2147549183)"
        ]
        assert [r.name for r in core.store.list()] == ["first"]
        assert core.podman.pods.keys() == pods.keys()
        assert starts(core) == started
    # the next range is free, and a pod keeps its own range across an update
    assert (await service.apply(with_userns("Job", "second", 2**31 + 65536))).changed
    update = with_userns("Pod", "first", 2**31)
    update["labels"] = {"updated": "yes"}
    assert (await service.apply(update)).generation == 2


def with_volumes(kind: str, name: str, *volumes: str) -> dict[str, Any]:
    data = with_userns(kind, name, 0)
    del data["userns"]
    data["containers"][0]["volumes"] = [
        {"source": volume, "target": f"/v{index}"} for index, volume in enumerate(volumes)
    ]
    return data


async def test_a_named_volume_belongs_to_the_pod_that_made_it(core: Core) -> None:
    service, podman = core.service, core.podman
    await service.apply(with_volumes("Pod", "maker", "data", "common"))
    # made by the core, labelled, before the containers (Podman would make it unlabelled)
    assert podman.volumes["data"] == {
        "io.github.iyclo.owner": "maker", "io.github.iyclo.pod": "maker",
        "io.github.iyclo.kind": "Pod",
    }  # fmt: skip
    assert podman.volumes["common"] == {}  # shared: left to Podman, owned by nobody
    pods, started = dict(podman.pods), starts(core)
    for kind in ("Pod", "Job"):
        with pytest.raises(InvalidError) as info:
            await service.apply(with_volumes(kind, "taker", "common", "data"))
        assert info.value.details == [
            'containers[0].volumes[1].source: refused: volume "data" belongs to "maker" and '
            "the daemon does not share it (policy.sharedVolumes)"
        ]
    podman.volumes["by-hand"] = {}  # `podman volume create by-hand`
    with pytest.raises(InvalidError) as info:
        await service.apply(with_volumes("Pod", "taker", "by-hand"))
    assert info.value.message == (
        'containers[0].volumes[0].source: refused: volume "by-hand" was not made by iyclo for '
        '"taker" and the daemon does not share it (policy.sharedVolumes)'
    )
    assert [r.name for r in core.store.list()] == ["maker"]
    assert (podman.pods.keys(), starts(core)) == (pods.keys(), started)
    # removing the pod keeps its volume, as Docker and Podman do; the pod may come back to it
    await service.remove("maker")
    assert "data" in podman.volumes
    assert (await service.apply(with_volumes("Pod", "maker", "data"))).changed


async def test_a_failed_apply_leaves_no_volume_behind(core: Core) -> None:
    """Whether the pod cannot be made or its unit cannot start: the volume made for it goes."""
    core.podman.fail_next("create_pod_with_containers", PodmanError("create pod: boom"))
    with pytest.raises(PodmanError):
        await core.service.apply(with_volumes("Job", "unlucky", "fresh"))
    core.systemd.fail_next(
        "StartTransientUnit", DBusError("org.freedesktop.DBus.Error.Failed", "no")
    )
    with pytest.raises(SystemdError):
        await core.service.apply(with_volumes("Pod", "unlucky", "fresh"))
    assert core.podman.volumes == {}
    assert core.podman.pods == {}
    assert core.store.list() == []


async def test_a_dead_sidecar_does_not_restart_its_pod_through_a_planted_link(
    core: Core, srv: Path
) -> None:
    """The daemon restarts a pod whose other container died (systemd watches only the
    main one): that is a start it makes, so it is checked too."""
    data = manifest("Pod", "sided", srv)
    data["containers"].append({"name": "side", "image": BUSYBOX, "command": ["true"]})
    data["restart"] = {"policy": "always"}
    await core.service.apply(data)
    plant_link(srv)
    before = starts(core)
    side = core.podman.containers["iyclo-sided-g1_side"]
    await core.service.pods._container_died("sided", {**side["Labels"], "containerExitCode": "1"})
    assert starts(core) == before


async def test_a_pod_made_with_the_old_container_names_is_made_again(core: Core) -> None:
    """Before the names could not collide, containers were ``<pod>-<container>``: a job's
    units re-created (after a reboot, at a start) name the new ones, so the pod is made
    again rather than started with containers its units cannot find."""
    service, podman = core.service, core.podman
    await service.apply(with_userns("Job", "elder", 2**31))
    await service.stop("elder")
    old = podman.containers.pop("iyclo-elder-g1_main")
    podman.containers["iyclo-elder-g1-main"] = {**old, "Names": ["iyclo-elder-g1-main"]}
    await service.start("elder")
    assert "iyclo-elder-g1_main" in podman.containers
    assert "iyclo-elder-g1-main" not in podman.containers
    assert len(podman.calls["create_pod_with_containers"]) == 2
