"""Image pulls: the pullPolicy field, pulls before anything is touched, what a failed pull
leaves (nothing), the images recorded per generation, and Podman's stream read as steps.

The real ``Service`` over the fake systemd and ``FakePodman`` (``tests.fakes``);
``tests/test_registry_host.py`` holds the same promises against a real registry.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from iyclo.contract.events import PullProgress
from iyclo.errors import InvalidError, PodmanError
from iyclo.manifest.convert import dump_manifest, parse_manifest
from iyclo.manifest.model import Pod
from iyclo.podman.pull import ImageRef, PullStep, pull_step
from tests.fakes.fixtures import Core

IMAGE = "127.0.0.1:5000/app:1"


def pod(name: str = "app", **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iyclo/v1", "kind": "Pod", "name": name,
        "containers": [{"name": "main", "image": IMAGE, **container},
                       {"name": "side", "image": "localhost/busybox:latest"}],
    }  # fmt: skip


# -- the field ----------------------------------------------------------------------------


def test_pull_policy_defaults_to_missing_and_is_left_out_when_default() -> None:
    manifest = parse_manifest(pod())
    assert isinstance(manifest, Pod)
    assert [c.pull_policy for c in manifest.containers] == ["missing", "missing"]
    assert "pullPolicy" not in dump_manifest(manifest)["containers"][0]  # digests unchanged
    always = parse_manifest(pod(pullPolicy="always"))
    assert dump_manifest(always)["containers"][0]["pullPolicy"] == "always"


def test_a_wrong_pull_policy_is_one_line_with_its_path() -> None:
    with pytest.raises(InvalidError) as caught:
        parse_manifest(pod(pullPolicy="sometimes"))
    assert caught.value.details == [
        'containers[0].pullPolicy: "sometimes" is not one of "always", "missing", "newer", "never"'
    ]


# -- Podman's stream ----------------------------------------------------------------------


def test_both_shapes_of_the_pull_stream_are_steps() -> None:
    # Podman 4.3's libpod lines (measured), and the Docker-style lines with sizes
    blob = {"stream": "Copying blob sha256:fd23d21a2f0a96d8ae99850f43861f8d9d0f72150a8d\n"}
    assert pull_step(blob) == PullStep("fd23d21a2f0a", "Copying blob")
    assert pull_step({"stream": "Trying to pull 127.0.0.1:5000/app:1...\n"}) is None
    assert pull_step({"images": ["41b8"], "id": "41b8"}) is None
    sized = {"status": "Downloading", "id": "41b8566d848e5e",
             "progressDetail": {"current": 512, "total": 2048}}  # fmt: skip
    assert pull_step(sized) == PullStep("41b8566d848e", "Downloading", 512, 2048)
    assert pull_step({"status": "Pull complete", "id": "41b8", "progressDetail": {}}) == (
        PullStep("41b8", "Pull complete")
    )


def test_an_image_ref_round_trips() -> None:
    ref = ImageRef(IMAGE, "sha256:" + "a" * 64, "sha256:" + "b" * 64)
    assert ImageRef.from_json(ref.to_json()) == ref


# -- pulls before anything is touched -----------------------------------------------------


async def test_apply_pulls_every_image_before_it_records_or_makes_anything(core: Core) -> None:
    order: list[str] = []
    real_apply = core.store.apply

    def apply(*args: Any, **kwargs: Any) -> Any:
        order.append("store.apply")
        return real_apply(*args, **kwargs)

    core.store.apply = apply  # type: ignore[method-assign]
    real_ensure = core.podman.ensure_image

    async def ensure(reference: str, *args: Any, **kwargs: Any) -> ImageRef:
        order.append(f"pull {reference} {args[0] if args else 'missing'}")
        return await real_ensure(reference, *args, **kwargs)

    core.podman.ensure_image = ensure  # type: ignore[method-assign]
    await core.service.apply(pod(pullPolicy="always"))
    assert order[:3] == [
        f"pull {IMAGE} always", "pull localhost/busybox:latest missing", "store.apply"
    ]  # fmt: skip


async def test_an_update_pulls_before_the_old_generation_stops(core: Core) -> None:
    await core.service.apply(pod())
    stops_before = len(core.systemd.calls.get("StopUnit", []))
    core.podman.missing_images.add("127.0.0.1:5000/app:2")
    with pytest.raises(PodmanError) as caught:
        await core.service.apply(pod(image="127.0.0.1:5000/app:2"))
    assert caught.value.message == (
        'image "127.0.0.1:5000/app:2" could not be pulled: initializing source '
        "docker://127.0.0.1:5000/app:2: reading manifest: manifest unknown"
    )
    assert "\n" not in caught.value.message
    # nothing changed: no generation, the old pod untouched and running
    assert [g.generation for g in core.store.history("app")] == [1]
    assert len(core.systemd.calls.get("StopUnit", [])) == stops_before
    assert sorted(core.podman.pods) == ["iyclo-app-g1"]
    assert (await core.service.status("app"))["state"] == "running"


async def test_a_failed_first_pull_leaves_no_record_no_pod_no_unit(core: Core) -> None:
    core.podman.missing_images.add(IMAGE)
    with pytest.raises(PodmanError, match=f'image "{IMAGE}"'):
        await core.service.apply(pod())
    assert core.store.find("app") is None
    assert core.podman.pods == {}
    assert not core.podman.calls["create_pod_with_containers"]
    assert not core.systemd.calls.get("StartTransientUnit")


async def test_never_refuses_a_missing_image_naming_it_and_the_field(core: Core) -> None:
    with pytest.raises(PodmanError) as caught:
        await core.service.apply(pod(pullPolicy="never"))
    assert caught.value.message == (f'image "{IMAGE}" is not present and its pullPolicy is "never"')
    assert core.store.find("app") is None
    core.podman.images[IMAGE] = "sha256:" + "1" * 64  # present: used as it is
    result = await core.service.apply(pod(pullPolicy="never"))
    assert result.changed


async def test_a_job_pulls_first_too(core: Core) -> None:
    job = {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": "nightly",
        "schedule": {"calendar": "*-*-* 03:00"},
        "containers": [{"name": "dump", "image": IMAGE, "pullPolicy": "always"}],
    }  # fmt: skip
    core.podman.missing_images.add(IMAGE)
    with pytest.raises(PodmanError, match=f'^image "{IMAGE}" could not be pulled: '):
        await core.service.apply(job)
    assert core.store.find("nightly") is None
    assert not core.systemd.calls.get("StartTransientUnit")
    core.podman.missing_images.clear()
    image_id = core.podman.push(IMAGE)
    assert (await core.service.apply(job)).state == "scheduled"
    assert (await core.service.status("nightly"))["images"]["dump"]["id"] == image_id


# -- the digest recorded ------------------------------------------------------------------


async def test_each_generation_records_its_images_and_status_shows_them(core: Core) -> None:
    image_id = core.podman.push(IMAGE)
    await core.service.apply(pod())
    images = core.store.get("app").images
    assert images["main"]["image"] == IMAGE
    assert images["main"]["id"] == image_id
    assert images["main"]["digest"].startswith("sha256:")
    assert set(images) == {"main", "side"}
    assert (await core.service.status("app"))["images"] == images


async def test_always_picks_up_a_pushed_tag_and_missing_does_not(core: Core) -> None:
    first = core.podman.push(IMAGE)
    assert (await core.service.apply(pod(pullPolicy="always"))).changed
    again = await core.service.apply(pod(pullPolicy="always"))
    assert not again.changed
    assert again.generation == 1
    second = core.podman.push(IMAGE)  # the tag pushed anew
    result = await core.service.apply(pod(pullPolicy="always"))
    assert result.changed
    assert result.generation == 2
    assert core.store.get("app").images["main"]["id"] == second != first
    assert sorted(core.podman.pods) == ["iyclo-app-g2"]
    history = await core.service.history("app")
    assert [h["images"]["main"]["id"] for h in history] == [first, second]
    core.podman.push(IMAGE)
    # "missing": the image is stored, so the tag is not asked for again
    assert (await core.service.apply(pod(pullPolicy="missing"))).generation == 3
    assert core.store.get("app").images["main"]["id"] == second


async def test_a_record_from_before_images_were_recorded_stays_unchanged(core: Core) -> None:
    await core.service.apply(pod())
    stored = core.store.get("app")
    table = core.store._table("deployments")  # as an older iyclo wrote it
    doc = copy.deepcopy(table.get(doc_id=1))
    assert doc is not None
    for entry in doc["generations"]:
        entry.pop("images", None)
    table.update({"generations": doc["generations"]}, doc_ids=[1])
    result = await core.service.apply(pod())
    assert not result.changed
    assert result.generation == stored.generation


# -- pull: the method ---------------------------------------------------------------------


async def test_pull_reports_progress_on_the_event_stream(core: Core) -> None:
    with core.service.events.subscription() as queue:
        result = await core.service.pull(pod(pullPolicy="always"))
        seen = [queue.get_nowait() for _ in range(queue.qsize())]
    assert result["name"] == "app"
    assert [(i["container"], i["image"]) for i in result["images"]] == [
        ("main", IMAGE), ("side", "localhost/busybox:latest")
    ]  # fmt: skip
    steps = [e for e in seen if isinstance(e, PullProgress)]
    # busybox is stored and its policy is "missing": nothing to pull, nothing reported
    assert [(e.name, e.image, e.status) for e in steps] == [
        ("app", IMAGE, "Copying blob"), ("app", IMAGE, "Copying config"),
    ]  # fmt: skip
    assert core.store.find("app") is None  # a pull deploys nothing


async def test_pull_of_one_image_pulls_it_always(core: Core) -> None:
    core.podman.images[IMAGE] = "sha256:" + "1" * 64
    new = core.podman.push(IMAGE)
    result = await core.service.pull(image=IMAGE)
    assert result["images"][0]["id"] == new
    assert core.podman.calls["ensure_image"][-1] == (IMAGE, "always")
    with pytest.raises(InvalidError, match="either a manifest or an image"):
        await core.service.pull()
    with pytest.raises(InvalidError, match="not an image reference"):
        await core.service.pull(image="a b")
