"""Names and labels iyclo gives to what it creates, in one place.

Units, Podman pods and containers are found again (after a daemon restart or a
reboot) by these names and labels alone, so they are derived, never stored.
"""

from __future__ import annotations

LABEL_PREFIX = "io.github.iyclo."
LABEL_POD = f"{LABEL_PREFIX}pod"
LABEL_KIND = f"{LABEL_PREFIX}kind"
LABEL_GENERATION = f"{LABEL_PREFIX}generation"
LABEL_HASH = f"{LABEL_PREFIX}hash"
LABEL_CONTAINER = f"{LABEL_PREFIX}container"
SLICE_PREFIX = "iyclo_"
RUN_DIR = "/run/iyclo"
CONTAINER_SEPARATOR = "_"
"""Between a Podman pod's name and what is named after it (its containers).

Pod and container names are ``[a-z0-9][a-z0-9-]*`` (``manifest.values.NAME_RE``), so a
``-`` joining them is ambiguous: pod ``a`` generation 1 with container ``g2-web`` and pod
``a-g1`` generation 2 with container ``web`` were both ``iyclo-a-g1-g2-web``, one
container (and one PID file) for two. ``_`` is a character Podman allows in names and a
manifest name cannot hold, so the first ``_`` splits the name back into exactly one
(pod, container) pair; ``podman_pod_name`` itself ends in ``-g<digits>`` and holds no
``_``, so it splits into one (name, generation).
"""


def unit_name(kind: str, name: str, suffix: str = "service") -> str:
    """``iyclo-pod-<name>.service``: cannot collide, since the kind is one of two fixed
    words right after ``iyclo-`` and a name holds no ``.`` (``parse_unit_name`` undoes it;
    ``tests/test_naming.py`` proves both)."""
    return f"iyclo-{kind.lower()}-{name}.{suffix}"


def slice_name(name: str) -> str:
    """The pod's own slice, holding its unit and its containers: a *top-level* slice.

    Measured on Debian 13: Podman 5.4 cannot use a nested slice ("iyclo-web.slice", a child
    of "iyclo.slice") as a pod's cgroup parent. It checks whether the pod's cgroup exists at
    the literal path "<parent>/<parent>-libpod_pod_<id>.slice", while systemd put it at
    "iyclo.slice/iyclo-web.slice/...", so `podman pod start` creates it a second time and
    fails with "Unit ... was already loaded". A top-level slice's path is the same both ways,
    and Podman 4.3 accepts it as well: one layout for both.

    So no "-" may appear in it, as a "-" in a slice name means a level of the tree: the
    prefix is "iyclo_", and the pod name's dashes are escaped as systemd-escape does
    (pod "a-b" gets "iyclo_a\\x2db.slice").
    """
    escaped = name.replace("-", "\\x2d")
    return f"{SLICE_PREFIX}{escaped}.slice"


def parse_slice_name(unit: str) -> str | None:
    """The pod name of one of our pod slices, or None (for Podman's pod slices
    "iyclo_<name>-libpod_pod_<id>.slice" and any other unit)."""
    if not unit.startswith(SLICE_PREFIX) or not unit.endswith(".slice"):
        return None
    stem = unit[len(SLICE_PREFIX) : -len(".slice")]
    if not stem or "-" in stem:
        return None
    return stem.replace("\\x2d", "-")


def podman_pod_name(name: str, generation: int) -> str:
    """One Podman pod per generation, so a new one is made before the old one goes.

    Injective: the generation is the digits after the last ``-g`` (a name may contain
    ``-g``, the digits cannot)."""
    return f"iyclo-{name}-g{generation}"


def container_name(pod_name: str, container: str) -> str:
    """A container of one generation's pod, joined by ``CONTAINER_SEPARATOR`` (see there
    why not ``-``)."""
    return f"{pod_name}{CONTAINER_SEPARATOR}{container}"


def secret_name(pod_name: str, container: str, secret: str) -> str:
    """The Podman secret made for one secret of one container of a generation's pod.

    Built on ``container_name``, so it follows that scheme wherever it goes; the "." that
    joins the secret's name cannot appear in a container's or a secret's own name, so no
    other container's secret can be spelt the same.
    """
    return f"{container_name(pod_name, container)}.{secret}"


def secret_pod(labels: dict[str, str]) -> str | None:
    """The Podman pod (generation) a secret iyclo made belongs to, from its labels."""
    name, generation = labels.get(LABEL_POD), labels.get(LABEL_GENERATION, "")
    if not name or not generation.isdigit():
        return None
    return podman_pod_name(name, int(generation))


def pid_file(podman_name: str) -> str:
    """conmon's PID file for a pod's infra container (a ``podman_pod_name``) or a
    container (a ``container_name``): the two never meet, since only the latter has a
    ``CONTAINER_SEPARATOR``, and each is injective, so neither do two PID files."""
    return f"{RUN_DIR}/{podman_name}.pid"


def parse_unit_name(unit: str) -> tuple[str, str] | None:
    """(kind, name) of an iyclo unit name, or None for any other unit."""
    stem, _, _suffix = unit.rpartition(".")
    for kind in ("pod", "job"):
        prefix = f"iyclo-{kind}-"
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return kind.capitalize(), stem[len(prefix) :]
    return None


def network_name(name: str) -> str:
    """The Podman network of the Network manifest ``name``: Podman's networks are a
    namespace of their own, so this never meets a pod's name."""
    return f"iyclo-{name}"
