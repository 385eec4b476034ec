"""Image pulls of a manifest, done before anything of it is touched, with their progress
on the event stream.

``Service.apply`` pulls every container's image (each as its ``pullPolicy`` says) before
it records a generation or stops anything: a wrong tag, an unreachable registry or a
refused login then fails the apply with Podman's one line naming the image, and nothing
has changed. What each reference resolved to is recorded with the generation, so the same
manifest with a tag pushed anew (``pullPolicy: always``) is a new generation.
"""

from __future__ import annotations

import time
from typing import Any

from iyclo.contract.events import PullProgress
from iyclo.core.events import EventBus
from iyclo.manifest.model import Manifest, every_container
from iyclo.podman.client import PodmanClient
from iyclo.podman.pull import ImageRef, PullPolicy, PullStep

PROGRESS_INTERVAL = 0.5
"""Seconds between two byte counts of one layer on the event stream: a pull of a large
layer reports thousands of them, and a slow subscriber would lose state changes to them."""


class Reporter:
    """Publishes one pull's steps as ``PullProgress`` events: every change of a layer's
    status, and its byte count at most every ``PROGRESS_INTERVAL``."""

    def __init__(self, events: EventBus, name: str, image: str) -> None:
        self._events = events
        self._name = name
        self._image = image
        self._last: dict[str, tuple[str, float]] = {}

    def __call__(self, step: PullStep) -> None:
        now = time.monotonic()
        status, at = self._last.get(step.layer, ("", 0.0))
        if status == step.status and now - at < PROGRESS_INTERVAL:
            return
        self._last[step.layer] = (step.status, now)
        self._events.publish(
            PullProgress(name=self._name, image=self._image, layer=step.layer,
                         status=step.status, current=step.current, total=step.total)
        )  # fmt: skip


async def pull_image(
    podman: PodmanClient, events: EventBus, name: str, image: str, policy: PullPolicy
) -> ImageRef:
    """One image as ``policy`` says, its steps published for ``name``."""
    return await podman.ensure_image(image, policy, Reporter(events, name, image))


async def pull_images(
    podman: PodmanClient, events: EventBus, manifest: Manifest
) -> dict[str, dict[str, Any]]:
    """Every container's image (init containers too), in the order Podman makes them:
    container name → ``ImageRef`` JSON. A reference asked for twice with the same policy
    is pulled once."""
    done: dict[tuple[str, PullPolicy], ImageRef] = {}
    images: dict[str, dict[str, Any]] = {}
    for _, container in every_container(manifest):
        key = (container.image, container.pull_policy)
        if key not in done:
            done[key] = await pull_image(podman, events, manifest.name, *key)
        images[str(container.name)] = done[key].to_json()
    return images


def images_changed(recorded: dict[str, Any], images: dict[str, Any]) -> bool:
    """Whether a generation's containers would now be made from other images; a
    generation recorded before iyclo recorded images has none, and is taken as it is."""
    return bool(recorded) and recorded != images
