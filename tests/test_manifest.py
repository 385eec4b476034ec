"""The manifest model: every broken manifest fails with its exact messages, every
good one round-trips through JSON unchanged, and the generated schema agrees."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from iyclo.errors import InvalidError
from iyclo.manifest.convert import (
    dump_manifest,
    manifest_digest,
    parse_manifest,
    parse_manifest_text,
)
from iyclo.manifest.model import Job, Pod
from iyclo.manifest.policy import Policy
from iyclo.manifest.schema import manifest_schema
from iyclo.manifest.values import parse_cpu_quota, parse_duration, parse_size, parse_ulimit

ROOT = Path(__file__).parent.parent
BROKEN = sorted((ROOT / "tests/manifests/broken").glob("*.json"))
GOLDEN_INPUTS = sorted((ROOT / "tests/manifests/golden").glob("*.input.json"))
EXAMPLES = sorted((ROOT / "examples").glob("**/*.json"))


def test_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_manifest_fails_with_exact_messages(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().splitlines()
    with pytest.raises(InvalidError) as info:
        parse_manifest_text(path.read_bytes(), source=path.name)
    assert info.value.details == expected
    assert info.value.message == expected[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    manifest = parse_manifest_text(path.read_bytes())
    assert manifest.name
    jsonschema.validate(json.loads(path.read_text()), manifest_schema())


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.name.split(".")[0])
def test_golden_canonical_form(path: Path) -> None:
    golden = path.with_name(path.name.replace(".input", ""))
    manifest = parse_manifest_text(path.read_bytes())
    assert dump_manifest(manifest) == json.loads(golden.read_text())
    # the canonical form is a fixed point, and it parses back to an equal object
    again = parse_manifest(json.loads(golden.read_text()))
    assert again == manifest
    assert dump_manifest(again) == json.loads(golden.read_text())
    assert manifest_digest(again) == manifest_digest(manifest)
    schema = manifest_schema()
    jsonschema.validate(json.loads(golden.read_text()), schema)
    jsonschema.validate(json.loads(path.read_text()), schema)


def test_digest_changes_with_content_not_with_defaults() -> None:
    base = json.loads((ROOT / "examples/web.json").read_text())
    explicit = json.loads(json.dumps(base))
    explicit["network"] = "bridge"  # the default, spelled out
    changed = json.loads(json.dumps(base))
    changed["containers"][1]["env"]["TZ"] = "Europe/Paris"
    digest = manifest_digest(parse_manifest(base))
    assert manifest_digest(parse_manifest(explicit)) == digest
    assert manifest_digest(parse_manifest(changed)) != digest


def test_kinds_and_defaults() -> None:
    pod = parse_manifest_text((ROOT / "examples/web.json").read_bytes())
    job = parse_manifest_text((ROOT / "examples/backup-job.json").read_bytes())
    assert isinstance(pod, Pod)
    assert isinstance(job, Job)
    assert pod.containers[1].security.no_new_privileges is True  # secure by default
    assert job.schedule.accuracy == "1s"
    assert job.schedule.overlap == "skip"


def test_policy_can_allow_what_defaults_refuse() -> None:
    data = json.loads(
        (ROOT / "tests/manifests/broken/12-privileged-and-unconfined.json").read_text()
    )
    data["containers"] = data["containers"][:1]
    relaxed = Policy(allow_privileged=True, allow_unconfined_seccomp=True)
    assert parse_manifest(data, relaxed).containers[0].security.privileged is True
    with pytest.raises(InvalidError):
        parse_manifest(data)


def test_schema_rejects_what_the_model_rejects() -> None:
    schema = manifest_schema()
    bad = {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "BAD", "containers": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("512", 512), ("1k", 1024), ("256M", 256 * 2**20), ("2G", 2 * 2**30)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "usec"),
    [
        ("30s", 30_000_000),
        ("5min", 300_000_000),
        ("1h 30min", 5_400_000_000),
        ("250ms", 250_000),
        ("2", 2_000_000),
        ("1.5s", 1_500_000),
    ],
)
def test_durations(text: str, usec: int) -> None:
    assert parse_duration(text) == usec


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "s", "1h x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time span"):
        parse_duration(text)


def test_cpu_quota() -> None:
    assert parse_cpu_quota("150%") == 1.5
    with pytest.raises(ValueError, match="is not a CPU quota"):
        parse_cpu_quota("0%")


def _pod(**overrides: object) -> dict[str, object]:
    return {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "p",
            "containers": [{"name": "a", "image": "i"}], **overrides}  # fmt: skip


def test_policy_allows_capabilities_and_profiles_it_lists() -> None:
    security = {"capAdd": ["SYS_PTRACE", "NET_RAW"], "seccompProfile": "/srv/profiles/x.json"}
    data = _pod(containers=[{"name": "a", "image": "i", "security": security}])
    with pytest.raises(InvalidError) as info:
        parse_manifest(data)
    assert [line.split(":")[0] for line in info.value.details] == [
        "containers[0].security.seccompProfile",
        "containers[0].security.capAdd[0]",
    ]
    relaxed = Policy(cap_add_allow=("CAP_SYS_PTRACE",), seccomp_profile_allow=("/srv/profiles",))
    assert parse_manifest(data, relaxed).containers[0].security.cap_add == ("SYS_PTRACE", "NET_RAW")
    # the tree's root is not a prefix match: /srv/profiles2 is outside /srv/profiles
    security["seccompProfile"] = "/srv/profiles2/x.json"
    with pytest.raises(InvalidError, match="outside the allowed profile directories"):
        parse_manifest(data, relaxed)


def test_user_namespace_must_fit_below_the_last_id() -> None:
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod(userns={"hostId": 2**32 - 65536, "size": 65536}))
    assert info.value.details == [
        "userns.size: host IDs 4294901760-4294967295 go beyond 4294967294"
    ]
    fits = parse_manifest(_pod(userns={"hostId": 2**32 - 65537}))
    assert fits.userns is not None
    assert fits.userns.size == 65536


@pytest.mark.parametrize(
    ("text", "expected"), [("1024", (1024, 1024)), ("512:4096", (512, 4096)), ("0:0", (0, 0))]
)
def test_ulimits(text: str, expected: tuple[int, int]) -> None:
    assert parse_ulimit(text) == expected


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.name.split(".")[0])
def test_manifest_round_trips_through_the_store(path: Path, tmp_path: Path) -> None:
    """manifest → canonical JSON → store on disk → a new Store → the same manifest."""
    from iyclo.store import Store

    manifest = parse_manifest_text(path.read_bytes())
    with Store.open(tmp_path / "state") as store:
        store.apply(manifest.name, manifest.kind.lower(), dump_manifest(manifest),
                    manifest_digest(manifest))  # fmt: skip
    with Store.open(tmp_path / "state") as store:
        record = store.get(manifest.name)
    assert parse_manifest(record.manifest) == manifest
    assert record.digest == manifest_digest(parse_manifest(record.manifest))
    golden = path.with_name(path.name.replace(".input", ""))
    assert record.manifest == json.loads(golden.read_text())


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"name": "web\n"}, "name"),
        ({"containers": [{"name": "a\n", "image": "i"}]}, "containers[0].name"),
        ({"containers": [{"name": "a", "image": "i", "env": {"KEY\n": "v"}}]},
         "containers[0].env"),
        ({"labels": {"tier\n": "web"}}, "labels"),
        ({"containers": [{"name": "a", "image": "i", "resources": {"memory": "64M\n"}}]},
         "containers[0].resources.memory"),
        ({"A\n": 1}, 'manifest["A\\n"]'),
    ],
    ids=["pod name", "container name", "env name", "label key", "size", "unknown key"],
)  # fmt: skip
def test_a_trailing_newline_is_refused_and_never_printed(
    overrides: dict[str, object], path: str
) -> None:
    """Python's ``$`` matches before a final newline: the anchored patterns checked
    values with ``match`` and took "web\\n" for a name (found by the hostile-input fuzz,
    through an unknown key's error line). Now every such check is ``fullmatch``, and
    every error line is one line."""
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod(**overrides))
    assert any(line.startswith(path) for line in info.value.details), info.value.details
    assert all(line.splitlines() == [line] for line in info.value.details)
