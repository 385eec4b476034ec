"""A reconcile asks Podman once, not once per record (issue #15): SIGKILL and restart
with 200 pods spent most of its time listing each record's pods and secrets.

Counted over the fakes, not timed (timings live in bench/)."""

from __future__ import annotations

from tests.fakes.fixtures import Core
from tests.test_reconcile_race import pod


async def _lists_during_reconcile(core: Core, pods: int) -> tuple[int, int]:
    for index in range(pods):
        await core.service.apply(pod(f"web-{index}"))
    core.podman.calls.clear()
    report = await core.service.reconcile()
    assert sorted(report.adopted) == sorted(f"web-{i}" for i in range(pods))
    return len(core.podman.calls["list_pods"]), len(core.podman.calls["list_secrets"])


async def test_podman_is_listed_as_often_for_six_records_as_for_one(core: Core) -> None:
    one = await _lists_during_reconcile(core, 1)
    six = await _lists_during_reconcile(core, 6)
    assert six == one
    assert six == (1, 1)  # the survey, which the orphans' removal reuses
