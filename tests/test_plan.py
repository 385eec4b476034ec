"""The exact requests iyclo makes of Podman and systemd for a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iyclo.core import naming
from iyclo.core.plan import plan_pod, sandbox_properties
from iyclo.manifest.convert import manifest_digest, parse_manifest
from iyclo.manifest.model import Pod
from iyclo.manifest.policy import UNRESTRICTED
from iyclo.systemd.properties import prop

ROOT = Path(__file__).parent.parent


def _web() -> Pod:
    manifest = parse_manifest(json.loads((ROOT / "examples/web.json").read_text()))
    assert isinstance(manifest, Pod)
    return manifest


def test_names_and_labels() -> None:
    pod = _web()
    plan = plan_pod(pod, 3, manifest_digest(pod))
    assert plan.unit == "iyclo-pod-web.service"
    assert plan.pod_name == "iyclo-web-g3"
    assert plan.pod_spec["labels"][naming.LABEL_POD] == "web"
    assert plan.pod_spec["labels"][naming.LABEL_GENERATION] == "3"
    assert plan.pod_spec["labels"][naming.LABEL_HASH] == manifest_digest(pod)
    assert plan.pod_spec["labels"]["app"] == "web"
    assert plan.pod_spec["cgroup_parent"] == "iyclo_web.slice"
    assert plan.slice == "iyclo_web.slice"
    assert [c.spec["name"] for c in plan.containers] == [
        "iyclo-web-g3_httpd",
        "iyclo-web-g3_writer",
    ]
    assert all(c.spec["pod"] == "iyclo-web-g3" for c in plan.containers)
    assert plan.containers[1].spec["labels"][naming.LABEL_CONTAINER] == "writer"


def test_container_spec_carries_resources_and_sandboxing() -> None:
    pod = _web()
    httpd = plan_pod(pod, 1, "d").containers[0].spec
    assert httpd["entrypoint"] == ["httpd", "-f", "-v", "-p", "8080", "-h", "/srv/www"]
    assert httpd["mem_limit"] == 64 * 2**20
    assert httpd["cpu_quota"] == 50_000
    assert httpd["cpu_period"] == 100_000
    assert httpd["pids_limit"] == 64
    assert httpd["cap_drop"] == ["ALL"]
    assert httpd["cap_add"] == ["NET_BIND_SERVICE"]
    assert httpd["read_only"] is True
    assert httpd["no_new_privileges"] is True
    assert httpd["volumes"] == {"web-content": {"bind": "/srv/www", "mode": "ro"}}
    assert httpd["conmon_pid_file"] == "/run/iyclo/iyclo-web-g1_httpd.pid"
    writer = plan_pod(pod, 1, "d").containers[1].spec
    assert writer["volumes"] == {"web-content": {"bind": "/srv/www", "mode": "rw"}}
    assert writer["environment"] == {"TZ": "UTC"}
    assert "conmon_pid_file" not in writer


def test_pod_publishes_ports_of_all_containers() -> None:
    spec = plan_pod(_web(), 1, "d").pod_spec
    assert spec["portmappings"] == [
        {"container_port": 8080, "host_port": 18080, "protocol": "tcp", "host_ip": "127.0.0.1"}
    ]
    assert spec["netns"] == {"nsmode": "bridge"}
    assert spec["infra_conmon_pid_file"] == "/run/iyclo/iyclo-web-g1.pid"


def test_unit_is_supervised_by_systemd() -> None:
    plan = plan_pod(_web(), 2, "d")
    props = dict(plan.unit_properties)
    assert props["Slice"] == "iyclo_web.slice"
    assert props["Type"] == "forking"
    assert props["PIDFile"] == "/run/iyclo/iyclo-web-g2_httpd.pid"
    assert props["KillMode"] == "process"
    assert props["Restart"] == "always"
    assert props["RestartUSec"] == 2_000_000
    assert props["StartLimitBurst"] == 5
    start = props["ExecStart"][0]
    assert start[1][1:] == ["pod", "start", "iyclo-web-g2"]
    stop = props["ExecStop"][0]
    assert stop[1][1:] == ["pod", "stop", "--ignore", "--time=2", "iyclo-web-g2"]
    assert props["ExecStopPost"][0][2] is True  # a failing cleanup does not fail the unit
    assert props["ProtectClock"] is True
    assert props["LockPersonality"] is True
    assert "ProtectHome" not in props
    assert props["Environment"] == [
        "PODMAN_SYSTEMD_UNIT=iyclo-pod-web.service",
        "PODMAN_IGNORE_CGROUPSV1_WARNING=1",
    ]
    # limits go on the pod's slice, which also holds the containers' cgroups
    assert "MemoryMax" not in props


def test_unit_name_round_trip() -> None:
    assert naming.parse_unit_name("iyclo-pod-web.service") == ("Pod", "web")
    assert naming.parse_unit_name("iyclo-job-nightly-backup.timer") == ("Job", "nightly-backup")
    assert naming.parse_unit_name("sshd.service") is None
    assert naming.parse_unit_name("iyclo-pod-.service") is None


def _pod(**overrides: Any) -> Pod:
    data: dict[str, Any] = {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": "box",
        "containers": [{"name": "main", "image": "localhost/busybox:latest"}],
    }  # fmt: skip
    data.update(overrides)
    manifest = parse_manifest(data, UNRESTRICTED)
    assert isinstance(manifest, Pod)
    return manifest


def _spec(**container: Any) -> dict[str, Any]:
    pod = _pod(containers=[{"name": "main", "image": "localhost/busybox:latest", **container}])
    return plan_pod(pod, 1, "d").containers[0].spec


def test_default_container_spec_is_exact() -> None:
    """What a container gets without asking: baseline drops and no-new-privileges."""
    assert _spec() == {
        "image": "localhost/busybox:latest",
        "name": "iyclo-box-g1_main",
        "pod": "iyclo-box-g1",
        "labels": {
            naming.LABEL_POD: "box", naming.LABEL_KIND: "Pod", naming.LABEL_GENERATION: "1",
            naming.LABEL_HASH: "d", naming.LABEL_CONTAINER: "main",
        },
        "stop_timeout": 10,
        "conmon_pid_file": "/run/iyclo/iyclo-box-g1_main.pid",
        "cap_drop": ["AUDIT_WRITE", "MKNOD", "NET_RAW", "SETFCAP", "SETPCAP", "SYS_CHROOT"],
        "no_new_privileges": True,
    }  # fmt: skip


def test_every_sandbox_and_resource_setting_maps_to_its_kwarg() -> None:
    spec = _spec(
        user="1000:1000",
        resources={"cpus": 0.25, "memory": "32M", "memorySwap": "64M", "pids": 20,
                   "ulimits": {"nproc": "100:200", "nofile": "512"}},
        security={"capDrop": ["CAP_KILL"], "capAdd": ["SYS_CHROOT", "CAP_NET_RAW"],
                  "seccompProfile": "/etc/iyclo/seccomp/p.json", "readOnlyRootfs": True,
                  "maskedPaths": ["/etc/hostname"], "noNewPrivileges": False},
        tmpfs=["/run"],
    )  # fmt: skip
    assert spec["user"] == "1000:1000"
    assert spec["cpu_period"] == 100_000
    assert spec["cpu_quota"] == 25_000
    assert spec["mem_limit"] == 32 * 2**20
    assert spec["memswap_limit"] == 64 * 2**20
    assert spec["pids_limit"] == 20
    assert spec["ulimits"] == [
        {"Name": "nofile", "Soft": 512, "Hard": 512},
        {"Name": "nproc", "Soft": 100, "Hard": 200},
    ]
    # a baseline drop listed in capAdd is kept; CAP_ prefixes are normalised
    assert spec["cap_drop"] == ["AUDIT_WRITE", "KILL", "MKNOD", "SETFCAP", "SETPCAP"]
    assert spec["cap_add"] == ["SYS_CHROOT", "NET_RAW"]
    assert spec["seccomp_profile_path"] == "/etc/iyclo/seccomp/p.json"
    assert spec["read_only"] is True
    assert spec["masked_paths"] == ["/etc/hostname"]
    assert spec["no_new_privileges"] is False
    # the manifest's /run, then the read-only container's other writable places
    assert spec["mounts"] == [
        {"type": "tmpfs", "source": "tmpfs", "target": "/run"},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp"},
        {"type": "tmpfs", "source": "tmpfs", "target": "/var/tmp"},
    ]


def test_read_only_rootfs_without_tmpfs_and_special_profiles() -> None:
    spec = _spec(security={"readOnlyRootfs": True, "readOnlyTmpfs": False})
    assert "mounts" not in spec
    assert "seccomp_profile_path" not in _spec(security={"seccompProfile": "default"})
    unconfined = _spec(security={"seccompProfile": "unconfined"})
    assert unconfined["seccomp_profile_path"] == "unconfined"
    assert _spec(security={"capDrop": ["ALL"], "capAdd": ["CHOWN"]})["cap_drop"] == ["ALL"]
    privileged = _spec(security={"privileged": True})
    assert privileged["privileged"] is True
    assert "cap_drop" not in privileged


def test_user_namespace_is_pod_wide() -> None:
    plan = plan_pod(_pod(userns={"hostId": 200000}), 1, "d")
    ids = [{"container_id": 0, "host_id": 200000, "size": 65536}]
    assert plan.pod_spec["userns"] == {"nsmode": "private"}
    assert plan.pod_spec["idmappings"] == {"UIDMap": ids, "GIDMap": ids}
    assert "userns" not in plan_pod(_pod(), 1, "d").pod_spec


def test_slice_holds_every_limit_and_lifts_unset_ones() -> None:
    unset = 2**64 - 1
    plan = plan_pod(_pod(systemd={"memoryMax": "96M", "tasksMax": 30, "cpuQuota": "50%",
                                  "ioWeight": 300, "memoryHigh": "80M", "cpuWeight": 50}),
                    1, "d")  # fmt: skip
    assert plan.slice_properties == (
        ("MemoryMax", 96 * 2**20), ("MemoryHigh", 80 * 2**20),
        ("CPUQuotaPerSecUSec", 500_000), ("TasksMax", 30), ("IOWeight", 300), ("CPUWeight", 50),
    )  # fmt: skip
    assert plan_pod(_pod(), 1, "d").slice_properties == (
        ("MemoryMax", unset), ("MemoryHigh", unset), ("CPUQuotaPerSecUSec", unset),
        ("TasksMax", unset), ("IOWeight", unset), ("CPUWeight", unset),
    )  # fmt: skip
    for key, value in plan.slice_properties:
        prop(key, value)  # each has the signature systemd expects
    unit = dict(plan.unit_properties)
    for key, _ in plan.slice_properties:
        assert key not in unit


def test_a_dash_in_the_name_does_not_nest_slices() -> None:
    plan = plan_pod(_pod(name="a-b"), 1, "d")
    assert plan.slice == "iyclo_a\\x2db.slice"
    assert dict(plan.unit_properties)["Slice"] == "iyclo_a\\x2db.slice"
    assert naming.parse_slice_name(plan.slice) == "a-b"
    assert naming.parse_slice_name("iyclo_a\\x2db-libpod_pod_0123.slice") is None
    assert naming.parse_slice_name("iyclo.slice") is None
    assert naming.parse_slice_name("iyclo-pod-a.service") is None


def test_generation_updated_in_place_keeps_its_pod() -> None:
    plan = plan_pod(_pod(), 5, "d5", pod_generation=3)
    assert plan.generation == 5
    assert plan.pod_name == "iyclo-box-g3"
    assert plan.containers[0].spec["name"] == "iyclo-box-g3_main"
    assert plan.pod_spec["labels"][naming.LABEL_GENERATION] == "3"
    assert dict(plan.unit_properties)["ExecStart"][0][1][-1] == "iyclo-box-g3"


def test_sandbox_properties_keep_resources_for_other_callers() -> None:
    block = _pod(systemd={"memoryMax": "1G", "protectClock": True}).systemd
    assert sandbox_properties(block) == [("ProtectClock", True), ("MemoryMax", 2**30)]
    assert sandbox_properties(block, resources=False) == [("ProtectClock", True)]
