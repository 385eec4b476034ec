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
SLICE = "iyclo.slice"
RUN_DIR = "/run/iyclo"


def unit_name(kind: str, name: str, suffix: str = "service") -> str:
    return f"iyclo-{kind.lower()}-{name}.{suffix}"


def podman_pod_name(name: str, generation: int) -> str:
    """One Podman pod per generation, so a new one is made before the old one goes."""
    return f"iyclo-{name}-g{generation}"


def container_name(pod_name: str, container: str) -> str:
    return f"{pod_name}-{container}"


def pid_file(pod_name: str) -> str:
    return f"{RUN_DIR}/{pod_name}.pid"


def parse_unit_name(unit: str) -> tuple[str, str] | None:
    """(kind, name) of an iyclo unit name, or None for any other unit."""
    stem, _, _suffix = unit.rpartition(".")
    for kind in ("pod", "job"):
        prefix = f"iyclo-{kind}-"
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return kind.capitalize(), stem[len(prefix) :]
    return None
