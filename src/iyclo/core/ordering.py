"""``dependsOn`` between pods (and from jobs to pods): the graph and the waiting.

One manifest can only be checked against itself (``policy``); whether the pods it names
exist and whether it closes a cycle through them is known only against the store, so
the apply checks it here, before anything is pulled or made. The graph is read from the
stored manifests as they are (plain JSON), not parsed again: a reconcile after a reboot
orders every record by it.

A start waits for its dependencies in the daemon (``wait_for``), bounded by each
dependency's ``timeout``. Not systemd's ``After=``: it orders only jobs queued together
(the daemon starts pods one after another), knows nothing of health checks on Podman
4.3, and a unit another unit names stays loaded after its stop, so a stopped pod's
transient unit could not be made again (``plan_job.dependency_checks``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from iyclo.errors import ConflictError, InvalidError, NotReadyError
from iyclo.manifest.model import Dependency, Job, Pod
from iyclo.manifest.values import duration_seconds

POLL = 0.5
"""Seconds between two looks at a dependency that is not there yet."""

Unmet = Callable[[Dependency], Awaitable[str | None]]
"""A dependency → why its condition does not hold now, or None when it does."""


def needs_of(manifest: Mapping[str, Any]) -> list[str]:
    """The pods a stored manifest (JSON) names in ``dependsOn``."""
    return [str(entry.get("pod", "")) for entry in manifest.get("dependsOn") or []]


def graph_problems(
    manifest: Pod | Job, stored: Mapping[str, tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """Each ``dependsOn`` entry naming no applied pod, and the first cycle this manifest
    would close; ``stored`` is name → (kind, manifest JSON) of every record."""
    found: list[str] = []
    needs = {name: needs_of(m) for name, (_, m) in stored.items()}
    needs[manifest.name] = [d.pod for d in manifest.depends_on]
    for i, dependency in enumerate(manifest.depends_on):
        where = f"dependsOn[{i}].pod"
        if dependency.pod == manifest.name:
            continue  # the manifest's own check says so
        kind = stored.get(dependency.pod, ("", {}))[0]
        if not kind:
            found.append(f'{where}: no pod named "{dependency.pod}" is applied (apply it first)')
        elif kind != "pod":
            found.append(f'{where}: "{dependency.pod}" is a {kind}; only pods can be waited for')
        else:
            cycle = _path_back(dependency.pod, manifest.name, needs)
            if cycle is not None:
                loop = " → ".join([manifest.name, *cycle])
                found.append(f"{where}: dependency cycle {loop}")
    return found


def _path_back(start: str, target: str, needs: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A path of needs from ``start`` to ``target`` (both included), or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        if name == target:
            return path
        if name in seen:
            continue
        seen.add(name)
        stack.extend((n, [*path, n]) for n in needs.get(name, ()))
    return None


def refuse_if_needed(name: str, stored: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """Removing a pod others wait for would leave their next start failing: refused,
    naming them, as removing a network in use is."""
    users = sorted(other for other, (_, m) in stored.items()
                   if other != name and name in needs_of(m))  # fmt: skip
    if users:
        raise ConflictError(
            f"pod '{name}' is needed by {', '.join(users)} (dependsOn)",
            hint="remove those first, or drop it from their dependsOn and apply them",
        )


def start_order(names: Iterable[str], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """``names`` with each after what it depends on (otherwise in the order given): the
    order a reconcile re-makes pods in after a reboot. A cycle cannot be stored (the
    apply refuses it); were one there, its members keep their given order."""
    given = list(names)
    known = set(given)
    placed: set[str] = set()
    order: list[str] = []

    def place(name: str, visiting: frozenset[str]) -> None:
        if name in placed or name in visiting:
            return
        for need in needs.get(name, ()):
            if need in known:
                place(need, visiting | {name})
        placed.add(name)
        order.append(name)

    for name in given:
        place(name, frozenset())
    return order


async def wait_for(
    dependencies: Sequence[Dependency], unmet: Unmet, on_wait: Callable[[str], None]
) -> None:
    """Until each dependency's condition holds, in order, each within its ``timeout``;
    ``NotReadyError`` naming it and why otherwise (nothing is made before this returns).
    ``on_wait`` hears why a start waits, once per change of the reason."""
    for i, dependency in enumerate(dependencies):
        within = duration_seconds(dependency.timeout)
        deadline = time.monotonic() + within
        told = ""
        while (why := await unmet(dependency)) is not None:
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    f"dependsOn[{i}]: pod {dependency.pod} not {dependency.condition} "
                    f"within {within:g}s: {why}"
                )
            if why != told:
                on_wait(f"waiting for pod {dependency.pod} to be {dependency.condition}: {why}")
                told = why
            await asyncio.sleep(POLL)


def refuse_graph(manifest: Pod | Job, stored: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    found = graph_problems(manifest, stored)
    if found:
        raise InvalidError(found[0], found)
