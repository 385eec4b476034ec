"""Networks on the one service, over the fake systemd and the fake Podman: a Network
manifest is a Podman network, pods join it by name with aliases, and what would leave a
pod without its network (or a network without a record) is refused or tidied."""

from __future__ import annotations

from typing import Any

import pytest

from iyclo.core import naming
from iyclo.core.plan import plan_pod
from iyclo.errors import ConflictError, InvalidError
from iyclo.manifest.convert import parse_manifest
from iyclo.manifest.model import Pod
from tests.fakes.fixtures import Core

BUSYBOX = "localhost/busybox:latest"


def network(name: str = "backend", internal: bool = True) -> dict[str, Any]:
    return {"apiVersion": "iyclo/v1", "kind": "Network", "name": name, "internal": internal}


def pod(name: str, *networks: dict[str, Any], ports: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": BUSYBOX, "command": ["sleep", "1d"]}
    if ports:
        container["ports"] = [{"containerPort": 80, "hostPort": 18099, "hostIp": "127.0.0.1"}]
    return {"apiVersion": "iyclo/v1", "kind": "Pod", "name": name, "containers": [container],
            "networks": list(networks)}  # fmt: skip


def test_a_pod_joins_its_networks_with_aliases_per_attachment() -> None:
    manifest = parse_manifest(pod("db", {"name": "backend", "aliases": ["db", "redis"]},
                                  {"name": "front"}))  # fmt: skip
    assert isinstance(manifest, Pod)
    spec = plan_pod(manifest, 1, "d").pod_spec
    assert spec["Networks"] == {"iyclo-backend": {"aliases": ["db", "redis"]},
                                "iyclo-front": {"aliases": []}}  # fmt: skip
    assert spec["netns"] == {"nsmode": "bridge"}
    assert "Networks" not in plan_pod(parse_manifest(pod("x")), 1, "d").pod_spec  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"network": "none", "networks": [{"name": "a"}]},
         'networks: a pod on network "none" cannot join networks'),
        ({"networks": [{"name": "a"}, {"name": "a"}]},
         'networks[1].name: "a" is listed more than once'),
        ({"networks": [{"name": "a", "aliases": ["x", "x"]}]},
         'networks[0].aliases[1]: "x" is listed more than once'),
        ({"networks": [{"name": "a", "aliases": ["Not_A_Name"]}]}, "networks[0].aliases[0]: "),
    ],
)  # fmt: skip
def test_attachments_are_validated_offline(change: dict[str, Any], line: str) -> None:
    with pytest.raises(InvalidError) as info:
        parse_manifest({**pod("x"), **change})
    assert any(d.startswith(line) for d in info.value.details), info.value.details


async def test_a_network_is_a_labelled_podman_network_with_history(core: Core) -> None:
    result = await core.service.apply(network())
    assert (result.kind, result.generation, result.state) == ("Network", 1, "created")
    made = core.podman.networks["iyclo-backend"]
    assert made.internal
    assert made.dns_enabled
    assert made.labels == {naming.LABEL_POD: "backend", naming.LABEL_KIND: "Network"}
    assert (await core.service.apply(network())).changed is False
    status = await core.service.status("backend")
    assert (status["state"], status["internal"], status["users"]) == ("created", True, [])
    assert "internal" in await core.service.diff(network(internal=False))
    await core.service.apply(network(internal=False))
    assert not core.podman.networks["iyclo-backend"].internal
    assert [g["generation"] for g in await core.service.history("backend")] == [1, 2]
    with pytest.raises(InvalidError, match="network 'backend' cannot be started"):
        await core.service.start("backend")
    await core.service.remove("backend")
    assert core.podman.networks == {}


async def test_an_unknown_network_is_one_line_and_nothing_is_made(core: Core) -> None:
    with pytest.raises(InvalidError) as info:
        await core.service.apply(pod("db", {"name": "nowhere"}))
    assert info.value.message == "networks[0].name: 'nowhere' is not an applied network"
    assert core.podman.pods == {}
    assert await core.service.list_all() == []
    assert await core.service.validate(pod("db", {"name": "nowhere"})) == [info.value.message]


async def test_ports_need_a_network_that_is_not_internal(core: Core) -> None:
    await core.service.apply(network())
    await core.service.apply(network("front", internal=False))
    with pytest.raises(InvalidError, match=r"^containers\[0\]\.ports\[0\]: cannot be published"):
        await core.service.apply(pod("web", {"name": "backend"}, ports=True))
    assert core.podman.pods == {}
    await core.service.apply(pod("web", {"name": "backend"}, {"name": "front"}, ports=True))


async def test_a_network_in_use_is_not_removed_and_names_its_users(core: Core) -> None:
    await core.service.apply(network())
    await core.service.apply(pod("db", {"name": "backend", "aliases": ["db"]}))
    await core.service.apply(pod("app", {"name": "backend"}))
    with pytest.raises(ConflictError) as info:
        await core.service.remove("backend")
    assert info.value.message == "network 'backend' is in use by app, db"
    with pytest.raises(
        ConflictError, match=r"internal cannot change while pods use it \(app, db\)"
    ):
        await core.service.apply(network(internal=False))
    assert "iyclo-backend" in core.podman.networks
    assert (await core.service.status("backend"))["users"] == ["app", "db"]
    await core.service.remove("app")
    await core.service.remove("db")
    await core.service.remove("backend")
    assert core.podman.networks == {}


async def test_reconcile_makes_missing_networks_first_and_removes_orphans(core: Core) -> None:
    await core.service.apply(network())
    await core.service.apply(pod("db", {"name": "backend"}))
    await core.podman.create_network("iyclo-left", internal=False, labels={
        naming.LABEL_POD: "left", naming.LABEL_KIND: "Network"})  # fmt: skip
    await core.podman.create_network("someone-elses", internal=False, labels={})
    del core.podman.networks["iyclo-backend"]
    report = await core.service.reconcile()
    assert (report.recreated, report.adopted) == (("backend",), ("db",)), report
    assert "iyclo-left" in report.removed
    assert set(core.podman.networks) == {"iyclo-backend", "someone-elses"}


def with_volume(name: str, volume: str) -> dict[str, Any]:
    manifest = pod(name)
    del manifest["networks"]
    manifest["containers"][0]["volumes"] = [{"source": volume, "target": "/data"}]
    return manifest


async def test_volumes_are_kept_on_rm_unless_asked_and_listed_with_owner(core: Core) -> None:
    await core.service.apply(with_volume("db", "db-data"))
    (row,) = await core.service.volumes()
    assert row == {"name": "db-data", "owner": "db", "inUse": True, "usedBy": ["db"],
                   "mountpoint": "/fake/volumes/db-data/_data"}  # fmt: skip
    await core.service.remove("db")
    assert [(r["name"], r["inUse"]) for r in await core.service.volumes()] == [("db-data", False)]
    await core.service.apply(with_volume("db", "db-data"))  # the same volume, taken up again
    await core.service.remove("db", volumes=True)
    assert await core.service.volumes() == []
    assert "db-data" not in core.podman.volumes
