"""Secrets without a host: the manifest's rules, the plan's requests, the keyed digest, and
the one core over the fakes (made per generation, removed with it, never shown).

The host test (``test_secrets_host.py``) proves the same on real Podman and systemd.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio

from iyclo.core import naming
from iyclo.core.plan import plan_pod
from iyclo.core.plan_job import plan_job
from iyclo.core.secrets import (
    KEY_FILE,
    SecretReader,
    SecretValues,
    fingerprint,
    host_key,
    secret_sources,
)
from iyclo.core.service import Service
from iyclo.errors import InvalidError, PodmanError
from iyclo.manifest.convert import load_manifest, manifest_digest, parse_manifest
from iyclo.manifest.model import Job, Pod
from iyclo.manifest.policy import SECRET_MAX_BYTES, Policy, secret_problems
from iyclo.store import Store
from iyclo.systemd.manager import SystemdManager
from tests.fakes.podman import FakePodman
from tests.fakes.systemd import FakeSystemd

VALUE = "s3cr3t-Value-9f2c"
OTHER = "another-Value-77aa"


def pod(secret_dir: Path, name: str = "shop", **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "containers": [
            {"name": "db", "image": "localhost/busybox:latest", "env": {"TZ": "UTC"},
             "secrets": [
                 {"name": "db-password", "file": str(secret_dir / "db-password"),
                  "target": "/run/secrets/db-password"},
                 {"name": "api", "file": str(secret_dir / "api"), "env": "API_KEY"},
             ], **container},
            {"name": "web", "image": "localhost/busybox:latest",
             "secrets": [{"name": "db-password", "file": str(secret_dir / "db-password"),
                          "env": "DB_PASSWORD"}]},
        ],
    }  # fmt: skip


def job(secret_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": "backup",
        "schedule": {"calendar": "*-*-* 03:00:00"},
        "containers": [{"name": "dump", "image": "localhost/busybox:latest",
                        "secrets": [{"name": "pw", "file": str(secret_dir / "db-password"),
                                     "target": "/run/secrets/pw", "mode": "0440",
                                     "uid": 70, "gid": 70}]}],
    }  # fmt: skip


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "db-password").write_text(VALUE)
    (directory / "api").write_text(OTHER)
    return directory


def policy_for(secret_dir: Path) -> Policy:
    return Policy(secret_file_allow=(str(secret_dir),))  # type: ignore[arg-type]


# -- the manifest and the policy --------------------------------------------------------


def test_a_manifest_keeps_only_the_reference(secret_dir: Path) -> None:
    manifest = load_manifest(pod(secret_dir), policy_for(secret_dir))
    assert isinstance(manifest, Pod)
    assert manifest.containers[0].secrets[0].file == str(secret_dir / "db-password")
    assert VALUE not in json.dumps(pod(secret_dir))


def test_secret_sources_are_checked_on_the_host(
    secret_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secret_dir / "big").write_bytes(b"x" * SECRET_MAX_BYTES)
    (secret_dir / "empty").write_bytes(b"")
    (secret_dir / "sub").mkdir()
    (secret_dir / "link").symlink_to(secret_dir / "db-password")
    (tmp_path / "outside").write_text("x")
    sources = [
        {"file": str(tmp_path / "outside")}, {"file": str(secret_dir / "link")},
        {"file": str(secret_dir / "sub")}, {"file": str(secret_dir / "big")},
        {"file": str(secret_dir / "empty")}, {"file": str(secret_dir / "missing")},
        {"credential": "db.pw"}, {"file": str(secret_dir / "db-password")},
    ]  # fmt: skip
    data = {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": "p",
        "containers": [{"name": "c", "image": "i", "secrets": [
            {"name": f"s{i}", "env": f"S{i}", **source} for i, source in enumerate(sources)
        ]}],
    }  # fmt: skip
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    manifest = parse_manifest(data)
    lines = secret_problems(manifest, policy_for(secret_dir))
    where = "containers[0].secrets"
    assert lines == [
        f'{where}[0].file: refused: "{tmp_path}/outside" is outside the allowed secret '
        f"directories ({secret_dir})",
        f'{where}[1].file: refused: "{secret_dir}/link" is a symbolic link',
        f'{where}[2].file: refused: "{secret_dir}/sub" is not a regular file',
        f'{where}[3].file: refused: "{secret_dir}/big" is {SECRET_MAX_BYTES} bytes; a secret '
        f"must have 1 to {SECRET_MAX_BYTES - 1} (Podman's limit)",
        f'{where}[4].file: refused: "{secret_dir}/empty" is 0 bytes; a secret must have 1 to '
        f"{SECRET_MAX_BYTES - 1} (Podman's limit)",
        f'{where}[5].file: refused: "{secret_dir}/missing" does not exist',
        f'{where}[6].credential: refused: credential "db.pw" cannot be read: iyclod was '
        "started without credentials ($CREDENTIALS_DIRECTORY is not set; see "
        "LoadCredential= in its unit)",
    ]
    # the default policy allows only /etc/iyclo/secrets
    assert (
        "outside the allowed secret directories (/etc/iyclo/secrets)"
        in (secret_problems(manifest)[0])
    )
    with pytest.raises(InvalidError) as info:
        load_manifest(data, policy_for(secret_dir))
    assert info.value.details[0] == lines[0]


def test_a_credential_is_read_from_the_daemons_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "db.pw").write_text(VALUE)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    data = {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": "p",
        "containers": [{"name": "c", "image": "i", "secrets": [
            {"name": "pw", "credential": "db.pw", "env": "PW"},
            {"name": "other", "credential": "nope", "env": "OTHER"}]}],
    }  # fmt: skip
    manifest = parse_manifest(data)
    assert secret_problems(manifest) == [
        f'containers[0].secrets[1].credential: refused: "{credentials}/nope" does not exist'
    ]
    reader = SecretReader(Policy(), tmp_path)
    one = attrs.evolve(
        manifest,
        containers=(attrs.evolve(manifest.containers[0],
                                 secrets=manifest.containers[0].secrets[:1]),),
    )  # fmt: skip
    values = reader.read([("containers[0].secrets[0]", "c", one.containers[0].secrets[0])])
    assert values.values == {("c", "pw"): VALUE.encode()}


# -- the plan ---------------------------------------------------------------------------


def test_the_plan_names_secrets_and_never_holds_a_value(secret_dir: Path) -> None:
    manifest = parse_manifest(pod(secret_dir))
    assert isinstance(manifest, Pod)
    plan = plan_pod(manifest, 3, "d" * 64)
    db, web = (c.spec for c in plan.containers)
    assert db["secrets"] == [
        {"source": "iyclo-shop-g3_db.db-password", "target": "/run/secrets/db-password",
         "mode": 0o400, "uid": 0, "gid": 0},
    ]  # fmt: skip
    assert db["secret_env"] == {"API_KEY": "iyclo-shop-g3_db.api"}
    assert db["environment"] == {"TZ": "UTC"}
    assert web["secret_env"] == {"DB_PASSWORD": "iyclo-shop-g3_web.db-password"}
    assert "secrets" not in web
    assert [(s.name, s.where) for s in plan.secrets] == [
        ("iyclo-shop-g3_db.db-password", "containers[0].secrets[0]"),
        ("iyclo-shop-g3_db.api", "containers[0].secrets[1]"),
        ("iyclo-shop-g3_web.db-password", "containers[1].secrets[0]"),
    ]
    assert plan.secrets[0].labels == {
        naming.LABEL_POD: "shop", naming.LABEL_KIND: "Pod", naming.LABEL_GENERATION: "3",
        naming.LABEL_CONTAINER: "db",
    }  # fmt: skip
    assert naming.secret_pod(plan.secrets[0].labels) == plan.pod_name
    assert VALUE not in repr(plan)


def test_a_jobs_plan_has_its_secrets_with_mode_and_owner(secret_dir: Path) -> None:
    manifest = parse_manifest(job(secret_dir))
    assert isinstance(manifest, Job)
    plan = plan_job(manifest, 2, "d" * 64)
    assert plan.containers[0].spec["secrets"] == [
        {"source": "iyclo-backup-g2_dump.pw", "target": "/run/secrets/pw", "mode": 0o440,
         "uid": 70, "gid": 70},
    ]  # fmt: skip
    assert [s.name for s in plan.secrets] == ["iyclo-backup-g2_dump.pw"]


def test_secret_names_cannot_be_spelt_by_another_container() -> None:
    # "." joins the secret: it appears in no container or secret name
    assert naming.secret_name("iyclo-a-g1", "web", "x") == "iyclo-a-g1_web.x"
    assert naming.secret_name("iyclo-a-g1", "web-x", "y") != naming.secret_name(
        "iyclo-a-g1", "web", "x-y"
    )


# -- the keyed digest -------------------------------------------------------------------


def test_the_digest_key_is_made_once_and_root_only(tmp_path: Path) -> None:
    key = host_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert host_key(tmp_path) == key


def test_the_digest_changes_with_a_value_and_is_no_plain_hash(tmp_path: Path) -> None:
    key = host_key(tmp_path)
    one = fingerprint(key, {("db", "pw"): VALUE.encode()})
    assert one == fingerprint(key, {("db", "pw"): VALUE.encode()})
    assert one != fingerprint(key, {("db", "pw"): OTHER.encode()})
    assert one != fingerprint(key, {("web", "pw"): VALUE.encode()})
    assert one != fingerprint(b"k" * 32, {("db", "pw"): VALUE.encode()})  # keyed
    assert hashlib.sha256(VALUE.encode()).hexdigest() not in one
    assert SecretValues().rollout_digest("abc") == "abc"  # records from before secrets
    values = SecretValues({("db", "pw"): VALUE.encode()}, one)
    assert values.rollout_digest("abc") not in ("abc", one)
    assert VALUE not in repr(values)


# -- the core, over the fakes -----------------------------------------------------------


@attrs.frozen
class Host:
    service: Service
    podman: FakePodman
    store: Store
    state_dir: Path


@pytest_asyncio.fixture
async def host(
    fake_systemd: FakeSystemd, systemd_manager: SystemdManager, tmp_path: Path, secret_dir: Path
) -> AsyncIterator[Host]:
    podman = FakePodman(fake_systemd)
    store = Store.open(tmp_path / "state")
    service = Service(store, systemd_manager, podman, policy=policy_for(secret_dir))  # type: ignore[arg-type]
    try:
        yield Host(service, podman, store, tmp_path / "state")
    finally:
        await service.close()
        podman.close()
        store.close()


def _secret_names(podman: FakePodman) -> set[str]:
    return set(podman.secrets)


def _containers(podman: FakePodman, pod_name: str) -> list[dict[str, Any]]:
    (call,) = [c for c in podman.calls["create_pod_with_containers"] if c[0] == pod_name]
    containers: list[dict[str, Any]] = call[2]
    return containers


async def test_apply_makes_each_generations_secrets_and_update_and_remove_drop_them(
    host: Host, secret_dir: Path
) -> None:
    await host.service.apply(pod(secret_dir))
    first = {"iyclo-shop-g1_db.db-password", "iyclo-shop-g1_db.api",
             "iyclo-shop-g1_web.db-password"}  # fmt: skip
    assert _secret_names(host.podman) == first
    assert host.podman.secrets["iyclo-shop-g1_db.api"]["Data"] == OTHER.encode()
    assert host.podman.secrets["iyclo-shop-g1_db.api"]["Labels"][naming.LABEL_GENERATION] == "1"
    # made before the containers that name them
    order = [name for name in host.podman.calls if name in ("create_secret",
             "create_pod_with_containers")]  # fmt: skip
    assert order[0] == "create_secret"
    assert _containers(host.podman, "iyclo-shop-g1")[0]["secret_env"] == {
        "API_KEY": "iyclo-shop-g1_db.api"
    }
    changed = pod(secret_dir, workdir="/tmp")
    result = await host.service.apply(changed)
    assert result.generation == 2
    assert _secret_names(host.podman) == {n.replace("-g1_", "-g2_") for n in first}
    await host.service.remove("shop")
    assert _secret_names(host.podman) == set()
    assert host.podman.pods == {}


async def test_a_changed_secret_file_rolls_out_a_new_generation(
    host: Host, secret_dir: Path
) -> None:
    first = await host.service.apply(pod(secret_dir))
    again = await host.service.apply(pod(secret_dir))
    assert (again.generation, again.changed) == (first.generation, False)
    (secret_dir / "db-password").write_text("rotated-" + VALUE)
    rotated = await host.service.apply(pod(secret_dir))
    assert (rotated.generation, rotated.changed) == (2, True)
    assert host.podman.secrets["iyclo-shop-g2_db.db-password"]["Data"] == (
        ("rotated-" + VALUE).encode()
    )
    assert not any("-g1-" in name for name in host.podman.secrets)
    history = await host.service.history("shop")
    assert history[0]["digest"] != history[1]["digest"]


async def test_a_changed_secret_is_never_an_update_in_place(host: Host, secret_dir: Path) -> None:
    await host.service.apply(pod(secret_dir))
    (secret_dir / "api").write_text("rotated")
    limits = pod(secret_dir)
    limits["systemd"] = {"memoryMax": "512M"}  # alone, this would update in place
    result = await host.service.apply(limits)
    assert result.state == "running"
    assert host.podman.secrets["iyclo-shop-g2_db.api"]["Data"] == b"rotated"


async def test_no_read_shows_a_value(host: Host, secret_dir: Path) -> None:
    events: list[str] = []

    async def collect() -> None:
        async for event in host.service.events.stream():
            events.append(json.dumps(event.to_json()))

    collecting = asyncio.ensure_future(collect())
    await asyncio.sleep(0)
    await host.service.apply(pod(secret_dir))
    (secret_dir / "db-password").write_text(OTHER + "-2")
    await host.service.apply(pod(secret_dir))
    collecting.cancel()
    replies = [
        await host.service.status("shop"), await host.service.manifest("shop"),
        await host.service.manifest("shop", 1), await host.service.history("shop"),
        await host.service.diff(pod(secret_dir, workdir="/x")), await host.service.list_all(),
    ]  # fmt: skip
    text = json.dumps(replies) + "".join(events)
    stored = "".join(p.read_text(errors="replace") for p in host.state_dir.iterdir()
                     if p.is_file() and p.name != KEY_FILE)  # fmt: skip
    for value in (VALUE, OTHER, OTHER + "-2"):
        assert value not in text
        assert value not in stored
        assert hashlib.sha256(value.encode()).hexdigest() not in text + stored
    assert events  # the events were seen


async def test_a_failed_apply_leaves_no_secret(host: Host, secret_dir: Path) -> None:
    host.podman.fail_next("create_pod_with_containers", PodmanError("create pod: boom"))
    with pytest.raises(PodmanError):
        await host.service.apply(pod(secret_dir))
    assert _secret_names(host.podman) == set()
    # a secret Podman refuses: the ones made before it go again
    await host.service.apply(pod(secret_dir))
    before = _secret_names(host.podman)
    broken = copy.deepcopy(pod(secret_dir, workdir="/x"))
    (secret_dir / "db-password").write_text("again")
    host.podman.fail_next("create_secret", PodmanError("create secret: refused"))
    with pytest.raises(PodmanError):
        await host.service.apply(broken)
    assert _secret_names(host.podman) == before


async def test_a_refused_source_creates_nothing(host: Host, secret_dir: Path) -> None:
    (secret_dir / "api").unlink()
    with pytest.raises(InvalidError) as info:
        await host.service.apply(pod(secret_dir))
    assert info.value.message.startswith("containers[0].secrets[1].file: refused: ")
    assert host.podman.secrets == {}
    assert host.podman.pods == {}
    assert host.store.find("shop") is None


async def test_a_job_makes_and_drops_its_secrets_the_same_way(host: Host, secret_dir: Path) -> None:
    await host.service.apply(job(secret_dir))
    assert _secret_names(host.podman) == {"iyclo-backup-g1_dump.pw"}
    (secret_dir / "db-password").write_text("rotated")
    assert (await host.service.apply(job(secret_dir))).generation == 2
    assert _secret_names(host.podman) == {"iyclo-backup-g2_dump.pw"}
    await host.service.remove("backup")
    assert _secret_names(host.podman) == set()


async def test_reconcile_removes_orphan_secrets(host: Host, secret_dir: Path) -> None:
    await host.service.apply(pod(secret_dir))
    kept = _secret_names(host.podman)
    labels = {naming.LABEL_POD: "gone", naming.LABEL_KIND: "Pod",
              naming.LABEL_GENERATION: "4"}  # fmt: skip
    await host.podman.create_secret("iyclo-gone-g4_c.s", b"x", labels)
    old_generation = {**labels, naming.LABEL_POD: "shop", naming.LABEL_GENERATION: "0"}
    await host.podman.create_secret("iyclo-shop-g0_c.s", b"x", old_generation)
    await host.podman.create_secret("not-ours", b"x", {})
    report = await host.service.reconcile()
    assert "iyclo-gone-g4_c.s" in report.removed
    assert _secret_names(host.podman) == kept | {"not-ours"}
    # a generation whose pod is gone, of a name still stored (e.g. the pod removed by hand)
    await host.podman.create_secret("iyclo-shop-g0_c.s", b"x", old_generation)
    await host.service.steps.remove_orphans({"shop"})
    assert _secret_names(host.podman) == kept | {"not-ours"}
    await host.podman.create_secret("iyclo-shop-g0_c.s", b"x", old_generation)
    await host.service.steps.remove_orphans({"shop"}, busy=lambda name: name == "shop")
    assert "iyclo-shop-g0_c.s" in host.podman.secrets  # an apply under way made it


def test_the_digest_of_a_manifest_without_secrets_is_unchanged(secret_dir: Path) -> None:
    data = pod(secret_dir)
    for container in data["containers"]:
        container.pop("secrets")
    manifest = parse_manifest(data)
    assert SecretValues().rollout_digest(manifest_digest(manifest)) == manifest_digest(manifest)


def test_a_link_planted_after_validation_is_not_read(secret_dir: Path, tmp_path: Path) -> None:
    """Apply reads the value itself, through the same no-symlink walk: a file swapped for
    a link to another file after validation is refused, not followed."""
    policy = policy_for(secret_dir)
    manifest = load_manifest(pod(secret_dir), policy)
    (tmp_path / "shadow").write_text("root:$6$not-yours")
    (secret_dir / "api").unlink()
    (secret_dir / "api").symlink_to(tmp_path / "shadow")
    reader = SecretReader(policy, tmp_path / "state")
    with pytest.raises(InvalidError) as info:
        reader.read(secret_sources(manifest))
    assert info.value.message == (
        f'containers[0].secrets[1].file: refused: "{secret_dir}/api" is a symbolic link'
    )
