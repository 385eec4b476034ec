"""Issue #11, "nobody gets in": each way a manifest could escape the daemon's policy, and the
one line that now refuses it (naming the field's JSON path) before anything is created."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iyclo.config import load_config
from iyclo.errors import InvalidError
from iyclo.manifest import values
from iyclo.manifest.convert import (
    MAX_MANIFEST_BYTES,
    load_manifest,
    load_manifest_async,
    parse_manifest,
    parse_manifest_text,
)
from iyclo.manifest.model import UserNamespace
from iyclo.manifest.policy import (
    DEFAULT_POLICY,
    UNRESTRICTED,
    VOLUME_OWNER_LABEL,
    IdRange,
    Policy,
    check_host_path,
    host_problems,
    ranges_overlap,
    userns_conflict,
    volume_claims,
    volume_problem,
)
from iyclo.manifest.values import AbsPath, VolumeName


def _pod(*containers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "iyclo/v1", "kind": "Pod", "name": "p",
            "containers": [{"name": "a", "image": "i", **c} for c in containers or ({},)],
            **fields}  # fmt: skip


def _job(calendar: str) -> dict[str, Any]:
    return {"apiVersion": "iyclo/v1", "kind": "Job", "name": "j",
            "containers": [{"name": "a", "image": "i"}],
            "schedule": {"calendar": calendar}}  # fmt: skip


def _refusal(manifest: dict[str, Any] | str, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """The lines ``load_manifest`` (the daemon's validation) refuses ``manifest`` with."""
    with pytest.raises(InvalidError) as info:
        load_manifest(manifest if isinstance(manifest, str) else json.dumps(manifest), policy)
    assert info.value.message == info.value.details[0]
    return info.value.details


# -- bind mounts: checked on the host, component by component, not as text ----------------


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """An allowed root on a real file system, reached without symbolic links."""
    root = tmp_path.resolve() / "srv"
    (root / "x").mkdir(parents=True)
    return root


def _bind(srv: Path, source: str) -> tuple[dict[str, Any], Policy]:
    manifest = _pod({"volumes": [{"source": source, "target": "/host"}]})
    return manifest, Policy(bind_mount_allow=(AbsPath(str(srv)),))


def test_a_symlink_planted_under_an_allowed_root_is_not_mounted(srv: Path) -> None:
    """One container writes /srv/x/root -> /; another pod's mount of it would be the host's /."""
    (srv / "x" / "root").symlink_to("/")
    manifest, policy = _bind(srv, f"{srv}/x/root")
    assert _refusal(manifest, policy) == [
        f'containers[0].volumes[0].source: refused: "{srv}/x/root" is a symbolic link'
    ]


def test_a_symlink_anywhere_in_a_bind_mount_source_is_named(srv: Path) -> None:
    (srv / "real" / "data").mkdir(parents=True)
    (srv / "link").symlink_to(srv / "real")
    manifest, policy = _bind(srv, f"{srv}/link/data")
    assert _refusal(manifest, policy) == [
        f'containers[0].volumes[0].source: refused: "{srv}/link/data" goes through the '
        f'symbolic link "{srv}/link"'
    ]
    # the same path without the link is mounted
    manifest, policy = _bind(srv, f"{srv}/real/data")
    assert load_manifest(manifest, policy).containers[0].volumes[0].source == f"{srv}/real/data"


def test_a_symlinked_allowed_root_is_refused_too(tmp_path: Path) -> None:
    """The walk starts at /: an operator whose /srv is a link lists the real directory."""
    real = tmp_path.resolve() / "real"
    (real / "data").mkdir(parents=True)
    (tmp_path / "srv").symlink_to(real)
    link = tmp_path.resolve() / "srv"
    problem = check_host_path(f"{link}/data", [str(link)])
    assert problem == f'"{link}/data" goes through the symbolic link "{link}"'


def test_the_walk_keeps_no_descriptor(srv: Path) -> None:
    """Every answer of the walk closes what it opened: a missing bind-mount source left its
    parent's descriptor open, one per check, in a daemon that checks before every start
    (93 of /srv were open in a fuzz worker on Debian 13)."""
    (srv / "x" / "file").write_text("")
    (srv / "link").symlink_to(srv / "x")
    paths = [f"{srv}/x", f"{srv}/x/missing", f"{srv}/x/missing/deeper", f"{srv}/link/file",
             f"{srv}/x/file/below", "/dev/null"]  # fmt: skip
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        for path in paths:
            check_host_path(path, [str(srv), "/dev"])
        check_host_path(f"{srv}/x/missing", [str(srv)], profile=True)
    assert len(os.listdir("/proc/self/fd")) == before


def test_check_host_path_for_the_core(srv: Path) -> None:
    """What the core calls again before every start: None for a plain directory or file,
    or a missing one (Podman reports that), a reason for everything else."""
    (srv / "x" / "file").write_text("")
    assert check_host_path(f"{srv}/x", [str(srv)]) is None
    assert check_host_path(f"{srv}/x/file", [str(srv)]) is None
    assert check_host_path(f"{srv}/x/missing/deeper", [str(srv)]) is None
    assert check_host_path(f"{srv}//x/./", [f"{srv}/"]) is None  # normalised on both sides
    assert check_host_path(f"{srv}/x/file/below", [str(srv)]) == (
        f'"{srv}/x/file/below" goes through "{srv}/x/file", which is not a directory'
    )
    assert check_host_path("/dev/null", ["/dev"]) == '"/dev/null" is a device node'
    assert check_host_path(f"{srv}/../etc", ["/"]) == f'"{srv}/../etc" has a ".." component'
    assert check_host_path("/etc", [str(srv)]) == (
        f'host path "/etc" is outside the allowed roots ({srv})'
    )
    # a link planted after validation is found by the next check, as before a start
    manifest, policy = _bind(srv, f"{srv}/x/later")
    parsed = load_manifest(manifest, policy)
    (srv / "x" / "later").symlink_to("/etc")
    assert host_problems(parsed, policy) == [
        f'containers[0].volumes[0].source: refused: "{srv}/x/later" is a symbolic link'
    ]
    # with the unrestricted policy of stored manifests, the link is still refused
    assert host_problems(parsed, UNRESTRICTED) == host_problems(parsed, policy)


def test_hostcheck_refuses_a_start_from_a_unit(srv: Path) -> None:
    """What a unit's ExecStartPre= runs, since systemd starts job runs and pod restarts."""
    (srv / "x" / "root").symlink_to("/")
    (srv / "profile.json").write_text("{}")

    def hostcheck(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iyclo.manifest.hostcheck", *argv],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    fine = hostcheck("--root", str(srv), "--bind", f"{srv}/x", "--profile-root", str(srv),
                     "--profile", f"{srv}/profile.json")  # fmt: skip
    assert (fine.returncode, fine.stderr) == (0, "")
    refused = hostcheck("--root", str(srv), "--bind", f"{srv}/x", "--bind", f"{srv}/x/root")
    assert refused.returncode == 1
    assert refused.stderr == (
        f'iyclo-hostcheck: {srv}/x/root: refused: "{srv}/x/root" is a symbolic link\n'
    )


def test_opt_is_no_longer_an_allowed_root() -> None:
    """Root-run software lives in /opt: a pod that may write there owns its next run."""
    assert "/opt" not in DEFAULT_POLICY.bind_mount_allow
    assert DEFAULT_POLICY.bind_mount_allow == ("/srv", "/var/lib/iyclo/volumes")
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod({"volumes": [{"source": "/opt/app", "target": "/app"}]}))
    assert info.value.details == [
        'containers[0].volumes[0].source: refused: host path "/opt/app" is outside the allowed '
        "roots (/srv, /var/lib/iyclo/volumes)"
    ]


def test_the_offline_check_does_not_read_the_host(srv: Path) -> None:
    """`iyclo validate` may run on another machine: only the daemon walks its paths."""
    (srv / "x" / "root").symlink_to("/")
    manifest, policy = _bind(srv, f"{srv}/x/root")
    assert parse_manifest(manifest, policy).containers[0].volumes[0].source == f"{srv}/x/root"


# -- seccompProfile: a normalised absolute path, under a profile root, no symlink ----------


def test_seccomp_profile_with_dot_dot_does_not_reach_podman() -> None:
    security = {"seccompProfile": "/etc/iyclo/seccomp/../../../srv/x/allow.json"}
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod({"security": security}))
    assert info.value.details == [
        'containers[0].security.seccompProfile: refused: "/etc/iyclo/seccomp/../../../srv/x/'
        'allow.json" has a ".." component'
    ]


def test_seccomp_profile_roots_compare_normalised_components() -> None:
    def refusal(profile: str) -> list[str]:
        with pytest.raises(InvalidError) as info:
            parse_manifest(_pod({"security": {"seccompProfile": profile}}))
        return info.value.details

    assert refusal("/etc/iyclo/seccomp2/p.json") == [
        'containers[0].security.seccompProfile: refused: "/etc/iyclo/seccomp2/p.json" is '
        "outside the allowed profile directories (/etc/iyclo/seccomp, /var/lib/iyclo/seccomp)"
    ]
    assert refusal("/var/lib/iyclo/seccomp-extra/p.json")[0].endswith(
        "is outside the allowed profile directories (/etc/iyclo/seccomp, /var/lib/iyclo/seccomp)"
    )
    fine = parse_manifest(_pod({"security": {"seccompProfile": "//etc/iyclo/./seccomp/p.json"}}))
    assert fine.containers[0].security.seccomp_profile == "//etc/iyclo/./seccomp/p.json"


def test_seccomp_profile_through_a_symlink_or_missing_is_refused(tmp_path: Path) -> None:
    profiles = tmp_path.resolve() / "seccomp"
    profiles.mkdir()
    (tmp_path / "allow-all.json").write_text("{}")
    (profiles / "p.json").symlink_to(tmp_path / "allow-all.json")
    (profiles / "real.json").write_text("{}")
    policy = Policy(seccomp_profile_allow=(AbsPath(str(profiles)),))

    def manifest(name: str) -> dict[str, Any]:
        return _pod({"security": {"seccompProfile": f"{profiles}/{name}"}})

    where = "containers[0].security.seccompProfile"
    assert _refusal(manifest("p.json"), policy) == [
        f'{where}: refused: "{profiles}/p.json" is a symbolic link'
    ]
    assert _refusal(manifest("absent.json"), policy) == [
        f'{where}: refused: "{profiles}/absent.json" does not exist'
    ]
    assert load_manifest(manifest("real.json"), policy).containers[0].security.seccomp_profile


# -- validation as a denial of service ------------------------------------------------------


@pytest.fixture
def systemd_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every systemd-analyze run, answered "valid" at once; the cache starts empty."""
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    values.clear_calendar_cache()
    monkeypatch.setattr(values.subprocess, "run", run)
    yield calls
    values.clear_calendar_cache()


def test_a_huge_calendar_expression_is_refused_unasked(systemd_calls: list[list[str]]) -> None:
    """256 distinct 1 MiB expressions used to add 258 MiB to the cache."""
    for index in range(8):
        with pytest.raises(InvalidError) as info:
            parse_manifest(_job(f"{index} " + "x" * 2**20))
        assert info.value.details == [
            f"schedule.calendar: the calendar expression is {2**20 + 2} characters long, more "
            "than the 256 allowed"
        ]
    assert systemd_calls == []
    assert values.calendar_cache_size() == 0
    assert values.check_calendar("x" * 257).ok is False


def test_the_calendar_cache_is_bounded(systemd_calls: list[list[str]]) -> None:
    for index in range(values.CALENDAR_CACHE_SIZE + 100):
        assert values.check_calendar(f"*-*-* 00:00:{index % 60:02} # {index}").ok
    assert values.calendar_cache_size() == values.CALENDAR_CACHE_SIZE
    runs = len(systemd_calls)
    values.check_calendar(f"*-*-* 00:00:{(runs - 1) % 60:02} # {runs - 1}")  # the newest
    assert len(systemd_calls) == runs  # answered from the cache


def test_a_calendar_timeout_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """One slow systemd-analyze must not make a stored job unreadable until a restart."""
    answers: list[Exception | int] = [subprocess.TimeoutExpired("systemd-analyze", 10),
                                      OSError(24, "Too many open files"), 0]  # fmt: skip

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return subprocess.CompletedProcess(argv, answer)

    values.clear_calendar_cache()
    monkeypatch.setattr(values.subprocess, "run", run)
    with pytest.raises(InvalidError) as info:
        parse_manifest(_job("daily"))
    assert info.value.details == [
        'schedule.calendar: "daily" is not a valid calendar expression: cannot check it: '
        "systemd-analyze took over 10s"
    ]
    with pytest.raises(InvalidError, match="cannot check it: Too many open files"):
        parse_manifest(_job("daily"))
    assert parse_manifest(_job("daily")).name == "j"
    assert values.calendar_cache_size() == 1
    values.clear_calendar_cache()


def test_only_systemd_answers_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 1 is systemd-analyze's "cannot parse" (measured); a kill is no answer."""
    calls: list[str] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv[-1])
        return subprocess.CompletedProcess(argv, {"bogus": 1, "killed": -9}[argv[-1]])

    values.clear_calendar_cache()
    monkeypatch.setattr(values.subprocess, "run", run)
    for _ in range(3):
        assert values.check_calendar("bogus") == values.CalendarCheck(
            False, "systemd cannot parse it"
        )
        assert values.check_calendar("killed").message == (
            "cannot check it: systemd-analyze exited with -9"
        )
    assert calls == ["bogus", "killed", "killed", "killed"]
    values.clear_calendar_cache()


async def test_load_manifest_async_keeps_the_loop_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd-analyze used to run on the event loop: every other caller waited for it."""

    def slow(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        time.sleep(0.5)
        return subprocess.CompletedProcess(argv, 0)

    values.clear_calendar_cache()
    monkeypatch.setattr(values.subprocess, "run", slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(200):  # bounded: at most 2 s
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    job = await asyncio.wait_for(load_manifest_async(json.dumps(_job("daily"))), timeout=10)
    tick_task.cancel()
    assert job.name == "j"
    assert ticks >= 20  # the loop ran while the check slept for 0.5 s
    assert (await values.check_calendar_async("daily")).ok  # cached by now
    values.clear_calendar_cache()


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_manifest_over_1_mib_is_refused_before_parsing(as_bytes: bool) -> None:
    manifest = _pod(labels={"filler": ""})
    overhead = len(json.dumps(manifest))
    manifest["labels"]["filler"] = "x" * (MAX_MANIFEST_BYTES - overhead + 1)
    text = json.dumps(manifest)
    assert len(text) == MAX_MANIFEST_BYTES + 1
    with pytest.raises(InvalidError) as info:
        parse_manifest_text(text.encode() if as_bytes else text)
    assert info.value.details == [
        "manifest: 1048577 bytes is more than a manifest may have (1048576 bytes, 1 MiB)"
    ]
    # one byte less is a manifest; the limit counts UTF-8 bytes, not characters
    manifest["labels"]["filler"] = manifest["labels"]["filler"][1:]
    assert parse_manifest_text(json.dumps(manifest)).name == "p"
    manifest["labels"]["filler"] = "é" * (MAX_MANIFEST_BYTES // 2)
    with pytest.raises(InvalidError, match="is more than a manifest may have"):
        load_manifest(json.dumps(manifest, ensure_ascii=False))


def test_many_problems_are_listed_up_to_a_hundred() -> None:
    env = {f"{index}BAD": "x" for index in range(5000)}
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod({"env": env}))
    assert len(info.value.details) == 100
    assert info.value.details[-1] == "manifest: 4901 more problems not shown"


# -- user namespaces: scoped to the operator's ranges --------------------------------------


def test_userns_host_id_must_lie_in_the_daemon_ranges() -> None:
    """hostId 1000 made container root the host's first user."""
    with pytest.raises(InvalidError) as info:
        parse_manifest(_pod(userns={"hostId": 1000, "size": 65536}))
    assert info.value.details == [
        "userns.hostId: refused: host IDs 1000-66535 are outside the ranges the daemon allows "
        "(2147483648-4294967294)"
    ]
    assert parse_manifest(_pod(userns={"hostId": 2**31})).userns == UserNamespace(2**31)
    # straddling the end of a range is outside it
    policy = Policy(userns_ranges=(IdRange(200000, 100000), IdRange(400000, 65536)))
    with pytest.raises(InvalidError, match=r"host IDs 265536-331071 are outside the ranges the "
                       r"daemon allows \(200000-299999, 400000-465535\)"):  # fmt: skip
        parse_manifest(_pod(userns={"hostId": 265536}), policy)
    assert parse_manifest(_pod(userns={"hostId": 400000}), policy).userns is not None


def test_userns_ranges_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "iyclo.json"
    path.write_text(json.dumps({"policy": {"usernsRanges": [{"start": 200000, "size": 10**6}]}}))
    assert load_config(path, required=True).policy.userns_ranges == (IdRange(200000, 10**6),)
    ranges = [{"start": 0, "size": 5}, {"start": 1, "size": 0},
              {"start": 2**32 - 10, "size": 10}, {"start": "1"}]  # fmt: skip
    path.write_text(json.dumps({"policy": {"usernsRanges": ranges}}))
    with pytest.raises(InvalidError) as info:
        load_config(path, required=True)
    assert info.value.details == [
        f'{path}: policy.usernsRanges[3].start: expected an integer, got "1"',
        f"{path}: policy.usernsRanges[3].size: is required",
    ]
    path.write_text(json.dumps({"policy": {"usernsRanges": ranges[:3]}}))
    with pytest.raises(InvalidError) as info:
        load_config(path, required=True)
    assert info.value.details == [
        f"{path}: policy.usernsRanges[0].start: 0 must be greater than 0 (root)",
        f"{path}: policy.usernsRanges[1].size: 0 must be greater than 0",
        f"{path}: policy.usernsRanges[2].size: host IDs 4294967286-4294967295 go beyond 4294967294",
    ]


def test_ranges_overlap_and_the_line_the_core_refuses_with() -> None:
    a = IdRange(100, 10)  # 100-109
    assert ranges_overlap(a, IdRange(109, 1))
    assert ranges_overlap(a, IdRange(50, 51))
    assert ranges_overlap(a, IdRange(0, 1000))
    assert not ranges_overlap(a, IdRange(110, 5))
    assert not ranges_overlap(a, IdRange(90, 10))
    mine = UserNamespace(2**31, 65536)
    others = {
        "web": UserNamespace(2**31 + 65535, 10),
        "db": None,
        "old": UserNamespace(2**32 - 2**16 - 1),
    }
    assert userns_conflict(mine, others) == (
        'userns.hostId: refused: host IDs 2147483648-2147549183 overlap those of "web" '
        "(2147549183-2147549192)"
    )
    assert userns_conflict(mine, {"db": None, "next": UserNamespace(2**31 + 65536)}) is None
    assert userns_conflict(None, others) is None


# -- named volumes: a manifest's own, or shared by the operator ----------------------------


def test_named_volumes_are_checked_against_the_shared_list(tmp_path: Path) -> None:
    manifest = parse_manifest(
        _pod(
            {
                "volumes": [
                    {"source": "media", "target": "/m"},
                    {"source": "/srv/x", "target": "/x"},
                    {"source": "p-data", "target": "/d"},
                ]
            }
        )
    )
    policy = Policy(shared_volumes=(VolumeName("media"),))
    claims = volume_claims(manifest, policy)
    assert [(c.where, c.name, c.shared) for c in claims] == [
        ("containers[0].volumes[0].source", "media", True),
        ("containers[0].volumes[2].source", "p-data", False),
    ]
    media, data = claims
    # at apply, with the existing volume's labels (None: not there, the core makes it)
    assert volume_problem(media, "p", {}) is None
    assert volume_problem(data, "p", None) is None
    assert volume_problem(data, "p", {VOLUME_OWNER_LABEL: "p"}) is None
    assert volume_problem(data, "p", {VOLUME_OWNER_LABEL: "db"}) == (
        'containers[0].volumes[2].source: refused: volume "p-data" belongs to "db" and the '
        "daemon does not share it (policy.sharedVolumes)"
    )
    assert volume_problem(data, "p", {}) == (
        'containers[0].volumes[2].source: refused: volume "p-data" was not made by iyclo for '
        '"p" and the daemon does not share it (policy.sharedVolumes)'
    )
    path = tmp_path / "iyclo.json"
    path.write_text(json.dumps({"policy": {"sharedVolumes": ["media", "bad name"]}}))
    with pytest.raises(InvalidError) as info:
        load_config(path, required=True)
    assert info.value.details == [
        f'{path}: policy.sharedVolumes[1]: "bad name" is not a volume name'
    ]


# -- reserved label keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "path", "reason"),
    [
        ("PODMAN_SYSTEMD_UNIT", "labels.PODMAN_SYSTEMD_UNIT", "is a key Podman acts on"),
        ("io.containers.autoupdate", 'labels["io.containers.autoupdate"]',
         'uses the prefix "io.containers.", which Podman or Docker-compatible tools act on'),
        ("io.containers.autoupdate.authfile", 'labels["io.containers.autoupdate.authfile"]',
         'uses the prefix "io.containers.", which Podman or Docker-compatible tools act on'),
        ("IO.Containers.AutoUpdate", 'labels["IO.Containers.AutoUpdate"]',
         'uses the prefix "io.containers.", which Podman or Docker-compatible tools act on'),
        ("io.podman.annotations.userns", 'labels["io.podman.annotations.userns"]',
         'uses the prefix "io.podman.", which Podman or Docker-compatible tools act on'),
        ("com.docker.compose.project", 'labels["com.docker.compose.project"]',
         'uses the prefix "com.docker.", which Podman or Docker-compatible tools act on'),
        ("io.github.iyclo.generation", 'labels["io.github.iyclo.generation"]',
         'uses the prefix "io.github.iyclo." reserved for iyclo'),
    ],
)  # fmt: skip
def test_reserved_label_keys_are_refused(key: str, path: str, reason: str) -> None:
    refused = "" if key.startswith("io.github.iyclo.") else "refused: "  # that one always
    for manifest in (
        _pod(labels={key: "x", "app": "web"}),
        {**_job("daily"), "labels": {key: "x"}},
    ):
        with pytest.raises(InvalidError) as info:
            parse_manifest(manifest)
        assert info.value.details == [f"{path}: {refused}{json.dumps(key)} {reason}"]


def test_the_operator_can_allow_a_reserved_label() -> None:
    """`podman auto-update` is a reason to let io.containers.autoupdate through, and only it."""
    policy = Policy(label_keys_allow=("io.containers.autoupdate",))
    labels = {"io.containers.autoupdate": "registry"}
    assert parse_manifest(_pod(labels=labels), policy).labels == labels
    authfile = {"io.containers.autoupdate.authfile": "/x"}
    with pytest.raises(
        InvalidError, match=r'labels\["io.containers.autoupdate.authfile"\]: refused'
    ):
        parse_manifest(_pod(labels=authfile), policy)
    assert parse_manifest(_pod(labels=authfile), Policy(label_keys_allow=("io.containers.",)))
    with pytest.raises(InvalidError, match="reserved for iyclo"):
        parse_manifest(_pod(labels={"io.github.iyclo.pod": "x"}), UNRESTRICTED)


def test_label_keys_allow_comes_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "iyclo.json"
    path.write_text(json.dumps({"policy": {"labelKeysAllow": ["io.containers.autoupdate"]}}))
    policy = load_config(path, required=True).policy
    labels = {"io.containers.autoupdate": "registry"}
    assert parse_manifest(_pod(labels=labels), policy).labels == labels


def test_stored_manifests_from_before_these_rules_stay_readable() -> None:
    """The daemon re-reads stored manifests with UNRESTRICTED to stop and remove them: a
    label or profile refused only since must not make them unreadable. Starting one again
    is what check_host_path, before every start, still refuses."""
    escape = "/etc/iyclo/seccomp/../../../srv/x/allow.json"
    labels = {"PODMAN_SYSTEMD_UNIT": "sshd.service", "io.containers.autoupdate": "x"}
    stored = _pod({"security": {"seccompProfile": escape}}, labels=labels)
    manifest = parse_manifest(stored, UNRESTRICTED)
    assert manifest.containers[0].security.seccomp_profile == escape
    assert host_problems(manifest, UNRESTRICTED) == [
        f'containers[0].security.seccompProfile: refused: "{escape}" has a ".." component'
    ]


def test_ordinary_labels_pass() -> None:
    labels = {"app": "web", "io.example.team": "ops", "podman": "no", "containers": "yes"}
    assert parse_manifest(_pod(labels=labels)).labels == labels


# -- text no field can carry -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{"name": "a\\u0000b"}', 'name: "a\\u0000b" contains a NUL character'),
        ('{"name": "\\ud800"}', 'name: "\\ud800" is not valid Unicode text (a lone surrogate)'),
        ('{"labels": {"a": NaN}}', "manifest: invalid JSON: NaN is not JSON"),
        ('{"labels": {"a": 1e999}}', "labels.a: expected a string, got Infinity"),
        ('{"restart": {"limit": 99999999999999999999}}',
         "restart.limit: 99999999999999999999 is out of range"),
        ('{"restart": {"limit": ' + "9" * 5000 + "}}",
         "manifest: invalid JSON: a number with too many digits"),
        ("[" * 100000 + "]" * 100000, "manifest: invalid JSON: nested too deeply"),
    ],
)  # fmt: skip
def test_text_no_field_can_carry_is_refused(text: str, line: str) -> None:
    base = json.dumps(_pod())[:-1]
    full = text if text.startswith("[") else base + ", " + text[1:]
    with pytest.raises(InvalidError) as info:
        parse_manifest_text(full)
    assert info.value.details == [line]


def test_containers_cpus_must_be_finite() -> None:
    with pytest.raises(InvalidError) as info:
        parse_manifest({**_pod({"resources": {"cpus": float("inf")}})})
    assert info.value.details == ["containers[0].resources.cpus: Infinity is not a finite number"]
