"""Each pod and job has its own transient slice, holding its unit and its containers.

Podman puts a pod's containers under the pod's cgroup parent, not inside the unit
that runs `podman pod start`, so limits on that unit would bound conmon only; set on
the slice, they bound everything the pod or job runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from iyclo.core import timeouts
from iyclo.core.unit_state import is_active
from iyclo.errors import NotFoundError
from iyclo.systemd.manager import SystemdManager
from iyclo.systemd.properties import prop


async def ensure_slice(
    systemd: SystemdManager,
    name: str,
    description: str,
    properties: Sequence[tuple[str, Any]],
    *,
    update: bool,
    wait_gone: Callable[[str], Awaitable[None]],
) -> None:
    """Start slice `name` with `properties`, or set them on it when it runs and `update`.

    It must be a transient unit before anything lands in it: a slice systemd loads on
    its own (as the parent of Podman's pod slice) cannot become transient any more.
    """
    values = [prop(key, value) for key, value in properties]
    try:
        await systemd.get_unit(name)
        state = await systemd.unit_properties(name)
    except NotFoundError:
        state = {}
    if is_active(state):
        if update:
            await systemd.set_unit_properties(name, True, values)
        return
    await wait_gone(name)
    await systemd.start_transient_unit(
        name, [prop("Description", description), *values], timeout=timeouts.SYSTEMD_JOB
    )
