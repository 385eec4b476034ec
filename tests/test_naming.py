"""Names iyclo derives for what it creates cannot collide (issue #11).

Each name is proved injective by decoding it back: if every generated input comes back
from its name, two different inputs cannot share one. Podman pods, containers, PID files,
units and slices are found again by these names alone, so a collision would hand one
pod's container, PID file or unit to another.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from iyclo.core import naming
from iyclo.manifest.values import NAME_RE

NAMES = st.from_regex(NAME_RE, fullmatch=True)
GENERATIONS = st.integers(min_value=1, max_value=2**63)
PODMAN_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
"""What Podman accepts as a pod's or a container's name."""


def decode_container(name: str) -> tuple[str, int, str]:
    """(pod, generation, container) back from a ``container_name``; the test's own inverse."""
    pod_name, separator, container = name.partition(naming.CONTAINER_SEPARATOR)
    assert separator, name
    return (*decode_pod(pod_name), container)


def decode_pod(pod_name: str) -> tuple[str, int]:
    stem, _, generation = pod_name.removeprefix("iyclo-").rpartition("-g")
    return stem, int(generation)


def test_the_issues_collision_is_gone() -> None:
    """Pod "a" generation 1 with container "g2-web", pod "a-g1" generation 2 with "web"."""
    first = naming.container_name(naming.podman_pod_name("a", 1), "g2-web")
    second = naming.container_name(naming.podman_pod_name("a-g1", 2), "web")
    assert (first, second) == ("iyclo-a-g1_g2-web", "iyclo-a-g1-g2_web")
    assert naming.pid_file(first) != naming.pid_file(second)


@settings(max_examples=2000)
@given(NAMES, GENERATIONS, NAMES)
def test_container_names_and_pid_files_decode_back(pod: str, generation: int, name: str) -> None:
    pod_name = naming.podman_pod_name(pod, generation)
    container = naming.container_name(pod_name, name)
    assert PODMAN_NAME_RE.match(pod_name)
    assert PODMAN_NAME_RE.match(container)
    assert decode_pod(pod_name) == (pod, generation)
    assert decode_container(container) == (pod, generation, name)
    # PID files: of a pod's infra container (its pod name) and of a container
    infra_pid, container_pid = naming.pid_file(pod_name), naming.pid_file(container)
    assert infra_pid != container_pid
    assert decode_container(container_pid.removeprefix(f"{naming.RUN_DIR}/")[:-4]) == (
        pod, generation, name,
    )  # fmt: skip
    assert "/" not in container_pid.removeprefix(f"{naming.RUN_DIR}/")


@settings(max_examples=1000)
@given(st.tuples(NAMES, GENERATIONS, NAMES), st.tuples(NAMES, GENERATIONS, NAMES))
def test_distinct_inputs_give_distinct_names(
    one: tuple[str, int, str], other: tuple[str, int, str]
) -> None:
    """The property the issue asks for, stated directly (the decoding above proves it)."""

    def names(pod: str, generation: int, container: str) -> tuple[str, str, str]:
        pod_name = naming.podman_pod_name(pod, generation)
        name = naming.container_name(pod_name, container)
        return name, naming.pid_file(name), naming.pid_file(pod_name)

    # and a near miss built on purpose, which random pairs would hardly ever hit: the
    # other pod's name swallows this one's generation, its container the other's
    pod, generation, container = one
    near = (f"{pod}-g{generation}"[:63], other[1], container.rpartition("-")[2] or "x")
    for a, b in ((one, other), (one, near)):
        (name_a, pid_a, infra_a), (name_b, pid_b, infra_b) = names(*a), names(*b)
        if a != b:
            assert name_a != name_b
            assert pid_a != pid_b
        assert infra_a != pid_b
        assert infra_b != pid_a


@settings(max_examples=1000)
@given(st.sampled_from(["Pod", "Job"]), NAMES, st.sampled_from(["service", "timer"]))
def test_unit_and_slice_names_decode_back(kind: str, name: str, suffix: str) -> None:
    """``iyclo-pod-<name>.service``: the kind is a fixed word and a name holds no ".", so
    the unit name gives back exactly one (kind, name); the slice escapes every "-" of a
    name (which holds no "\\"), so it gives back one name, and never parses as Podman's
    own ``iyclo_<name>-libpod_pod_<id>.slice``."""
    unit = naming.unit_name(kind, name, suffix)
    assert naming.parse_unit_name(unit) == (kind, name)
    slice_ = naming.slice_name(name)
    assert "-" not in slice_
    assert naming.parse_slice_name(slice_) == name
    assert naming.parse_slice_name(f"{slice_[: -len('.slice')]}-libpod_pod_0a1b.slice") is None
