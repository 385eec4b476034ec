"""A reconcile asks Podman once, not once per record (issue #15): SIGKILL and restart
with 200 pods spent most of its time listing each record's pods and secrets, then
looking up each pod's unit before reading it.

Counted over the fakes, not timed (timings live in bench/)."""

from __future__ import annotations

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
