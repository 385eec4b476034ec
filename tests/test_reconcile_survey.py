"""Podman is listed once, not once per record or per event (issue #15): SIGKILL and
restart with 200 pods spent most of its time listing each record's pods and secrets, then
looking up each pod's unit before reading it; an apply at 200 pods spent more listing
the pod's containers for each of its own events than making the pod.

Counted over the fakes, not timed (timings live in bench/)."""

from __future__ import annotations

import asyncio

from iyclo.core import naming
from tests.fakes.fixtures import Core
from tests.test_reconcile_race import pod


async def _lists_during_reconcile(core: Core, pods: int) -> tuple[int, ...]:
    for index in range(pods):
        await core.service.apply(pod(f"web-{index}"))
    core.podman.calls.clear()
    core.systemd.calls.clear()
    report = await core.service.reconcile()
    assert sorted(report.adopted) == sorted(f"web-{i}" for i in range(pods))
    return (
        len(core.podman.calls["list_pods"]),
        len(core.podman.calls["list_secrets"]),
        len(core.podman.calls["list_containers"]),
        len(core.systemd.calls["GetUnit"]),
    )


async def test_podman_is_listed_as_often_for_six_records_as_for_one(core: Core) -> None:
    one = await _lists_during_reconcile(core, 1)
    six = await _lists_during_reconcile(core, 6)
    assert six == one
    # The survey, which the orphans' removal and the live cache's resync reuse; the
    # units it read were listed loaded, so none was looked up first.
    assert six == (1, 1, 1, 0)


async def test_a_pod_changed_since_the_survey_keeps_what_its_event_read(core: Core) -> None:
    """The resync takes the survey's containers only for pods no event refreshed since."""
    await core.service.apply(pod("web-0"))
    survey = await core.service.survey()
    live = core.service.pods.live
    await live.refresh_containers("web-0")  # as an event after the survey would
    seen = live.pods["web-0"].containers_seen
    await core.service.reconcile(survey=survey)
    assert live.pods["web-0"].containers_seen == seen


async def test_an_apply_lists_its_containers_once(core: Core) -> None:
    """The apply's own events (its containers starting) are in the listing it makes at
    its end; they are not listed for again, during the apply or after it."""
    await core.service.start_watching()
    await core.service.apply(pod("web-warm"))  # the event stream is connected by now
    await asyncio.sleep(0.3)
    core.podman.calls.clear()
    await core.service.apply(pod("web-0"))
    await asyncio.sleep(0.3)  # events' refreshes are 20 ms after their last event
    assert len(core.podman.calls["list_containers"]) == 1
    container = next(name for name, c in core.podman.containers.items()
                     if c["Labels"].get(naming.LABEL_POD) == "web-0"
                     and c["Labels"].get(naming.LABEL_CONTAINER))  # fmt: skip
    core.podman.container_died(container, 1)  # a change after the apply is listed for
    await asyncio.sleep(0.3)
    assert len(core.podman.calls["list_containers"]) >= 2


async def test_a_unit_changed_since_the_survey_keeps_what_its_signal_read(core: Core) -> None:
    """A reconcile adopting a pod from its survey keeps a unit read since (for a signal)
    rather than the survey's older read, and a signal heard after the survey's read is
    read for even when the adoption comes later."""
    await core.service.start_watching()
    await core.service.apply(pod("web-0"))
    unit = "iyclo-pod-web-0.service"
    live = core.service.pods.live
    survey = await core.service.survey()
    core.systemd.set_unit_state(unit, "active", "running", main_pid=4242)
    await asyncio.sleep(0.3)  # the signal's refresh (20 ms after it) has read the unit
    await core.service.reconcile(survey=survey)
    await asyncio.sleep(0.3)
    assert live.pods["web-0"].unit["MainPID"] == 4242
