"""The exact requests iyclo makes of Podman and systemd for a manifest."""

from __future__ import annotations

import json
from pathlib import Path

from iyclo.core import naming
from iyclo.core.plan import plan_pod
from iyclo.manifest.convert import manifest_digest, parse_manifest
from iyclo.manifest.model import Pod

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
    assert plan.pod_spec["cgroup_parent"] == "iyclo.slice"
    assert [c.spec["name"] for c in plan.containers] == [
        "iyclo-web-g3-httpd",
        "iyclo-web-g3-writer",
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
    assert httpd["conmon_pid_file"] == "/run/iyclo/iyclo-web-g1-httpd.pid"
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
    assert props["Slice"] == "iyclo.slice"
    assert props["Type"] == "forking"
    assert props["PIDFile"] == "/run/iyclo/iyclo-web-g2-httpd.pid"
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
    assert props["MemoryMax"] == 256 * 2**20
    assert props["Environment"] == ["PODMAN_SYSTEMD_UNIT=iyclo-pod-web.service"]


def test_unit_name_round_trip() -> None:
    assert naming.parse_unit_name("iyclo-pod-web.service") == ("Pod", "web")
    assert naming.parse_unit_name("iyclo-job-nightly-backup.timer") == ("Job", "nightly-backup")
    assert naming.parse_unit_name("sshd.service") is None
    assert naming.parse_unit_name("iyclo-pod-.service") is None
