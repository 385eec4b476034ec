"""``dependsOn``: the graph checks an apply makes, the order a reconcile makes pods in,
and the bounded wait of a start (``iyclo.core.ordering``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from iyclo.core.ordering import graph_problems, refuse_if_needed, start_order, wait_for
from iyclo.core.plan import plan_pod
from iyclo.core.plan_job import plan_job
from iyclo.errors import ConflictError, InvalidError, NotReadyError
from iyclo.manifest.convert import parse_manifest
from iyclo.manifest.model import Dependency, Job, Pod


def pod(name: str, *needs: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "containers": [{"name": "main", "image": "localhost/busybox:latest"}],
        "dependsOn": [{"pod": n} for n in needs], **extra,
    }  # fmt: skip


def job(name: str, *needs: str, condition: str = "started") -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": name,
        "containers": [{"name": "main", "image": "localhost/busybox:latest"}],
        "schedule": {"calendar": "daily"},
        "dependsOn": [{"pod": n, "condition": condition} for n in needs],
    }  # fmt: skip


def parsed(data: dict[str, Any]) -> Pod | Job:
    return parse_manifest(data)


def stored(*manifests: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {m["name"]: (m["kind"].lower(), m) for m in manifests}


def test_a_dependency_defaults_to_ready_within_a_minute() -> None:
    manifest = parsed(pod("web", "db"))
    assert manifest.depends_on == (Dependency("db", "ready", "60s"),)


def test_one_manifest_is_checked_against_itself() -> None:
    with pytest.raises(InvalidError) as caught:
        parsed(pod("web", "web", "db", "db"))
    assert caught.value.details == [
        'dependsOn[0].pod: "web" cannot depend on itself',
        'dependsOn[2].pod: "db" is listed more than once',
    ]
    with pytest.raises(InvalidError, match=r"dependsOn\[0\].condition: a job's run can only"):
        parsed(job("backup", "db", condition="ready"))
    with pytest.raises(InvalidError, match=r"dependsOn\[0\].condition"):
        parsed(pod("web", **{"dependsOn": [{"pod": "db", "condition": "healthy"}]}))


def test_names_that_are_not_there_and_cycles_are_found_against_the_store() -> None:
    records = stored(pod("db"), pod("app", "web"), job("backup"))
    assert graph_problems(parsed(pod("web", "cache", "backup", "app")), records) == [
        'dependsOn[0].pod: no pod named "cache" is applied (apply it first)',
        'dependsOn[1].pod: "backup" is a job; only pods can be waited for',
        "dependsOn[2].pod: dependency cycle web → app → web",
    ]
    assert graph_problems(parsed(pod("web", "db")), records) == []
    # a longer cycle, through pods already stored
    chain = stored(pod("a", "b"), pod("b", "c"), pod("c"))
    assert graph_problems(parsed(pod("c", "a")), chain) == [
        "dependsOn[0].pod: dependency cycle c → a → b → c"
    ]


def test_a_pod_others_need_cannot_be_removed() -> None:
    records = stored(pod("db"), pod("app", "db"), pod("web", "app", "db"), job("backup", "db"))
    with pytest.raises(ConflictError, match=r"pod 'db' is needed by app, backup, web"):
        refuse_if_needed("db", records)
    refuse_if_needed("web", records)


def test_a_reconcile_makes_what_a_pod_needs_first() -> None:
    needs = {"web": ["app"], "app": ["db"], "db": [], "other": [], "backup": ["db"]}
    order = start_order(["web", "other", "backup", "app", "db"], needs)
    assert order == ["db", "app", "web", "other", "backup"]
    # a cycle (never stored: the apply refuses it) keeps its members, in the given order
    assert start_order(["a", "b"], {"a": ["b"], "b": ["a"]}) == ["b", "a"]
    assert start_order(["x"], {"x": ["gone"]}) == ["x"]


async def test_a_start_waits_for_the_condition_and_says_why() -> None:
    answers = iter(["its unit is activating", "its unit is activating",
                    "container db is starting"])  # fmt: skip
    heard: list[str] = []

    async def unmet(dependency: Dependency) -> str | None:
        return next(answers, None)

    await wait_for((Dependency("db", "ready", "10s"),), unmet, heard.append)
    assert heard == [
        "waiting for pod db to be ready: its unit is activating",
        "waiting for pod db to be ready: container db is starting",
    ]


async def test_a_wait_ends_at_the_dependencys_timeout_in_seconds() -> None:
    async def never(dependency: Dependency) -> str | None:
        return "its unit is inactive"

    began = time.monotonic()
    with pytest.raises(NotReadyError) as caught:
        await asyncio.wait_for(wait_for((Dependency("db", "started", "1s"),), never, print), 10)
    assert 0.9 <= time.monotonic() - began < 5
    assert caught.value.message == (
        "dependsOn[0]: pod db not started within 1s: its unit is inactive"
    )


def test_a_jobs_run_checks_that_the_pods_it_needs_run() -> None:
    """A check in the run, not After=/Requisite=: those would keep the pod's unit loaded
    after its stop (``plan_job.dependency_checks``)."""
    backup = parsed(job("backup", "db"))
    assert isinstance(backup, Job)
    service = dict(plan_job(backup, 1, "d").service_properties)
    assert not {"After", "Requisite", "Requires"} & set(service)
    (check,) = [argv for _, argv, _ in service["ExecStartPre"] if "dependsOn" in argv]
    assert check[-2:] == ["iyclo-pod-db.service", "db"]
    web = parsed(pod("web", "db"))
    assert isinstance(web, Pod)
    assert not {"After", "Requisite", "Requires"} & set(dict(plan_pod(web, 1, "d").unit_properties))
