"""iyclod's policy: the config file, the flags, and how they combine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iyclo.config import DaemonConfig, load_config
from iyclo.daemon import build_parser, build_policy
from iyclo.errors import InvalidError
from iyclo.manifest.policy import DEFAULT_POLICY, Policy


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "iyclo.json"
    path.write_text(json.dumps(data))
    return path


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.json", required=False) == DaemonConfig()
    with pytest.raises(InvalidError, match=r"absent\.json: no such file"):
        load_config(tmp_path / "absent.json", required=True)


def test_file_replaces_lists_and_sets_permissions(tmp_path: Path) -> None:
    path = _write(tmp_path, {"policy": {"allowHostNetwork": True, "bindMountAllow": ["/data"]}})
    policy = load_config(path, required=True).policy
    assert policy == Policy(allow_host_network=True, bind_mount_allow=("/data",))


def test_every_mistake_is_reported_with_its_path(tmp_path: Path) -> None:
    policy = {"allowPrivileged": "yes", "capAddAllow": ["NOPE"],
              "seccompProfileAllow": ["rel"], "allowEverything": 1}  # fmt: skip
    path = _write(tmp_path, {"policy": policy})
    with pytest.raises(InvalidError) as info:
        load_config(path, required=True)
    assert info.value.details == [
        f'{path}: policy.allowPrivileged: expected true or false, got "yes"',
        f'{path}: policy.seccompProfileAllow[0]: "rel" is not an absolute path',
        f'{path}: policy.capAddAllow[0]: "NOPE" is not a Linux capability '
        '(e.g. "CAP_NET_RAW" or "ALL")',
        f"{path}: policy.allowEverything: unknown field",
    ]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidError, match=r"bad\.json: invalid JSON at line 1 column 2"):
        load_config(tmp_path / "bad.json", required=True)
    _write(tmp_path, ["policy"])
    with pytest.raises(InvalidError, match=r"iyclo\.json: expected an object"):
        load_config(path, required=True)


def test_flags_only_loosen_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"policy": {"allowPrivileged": True, "bindMountAllow": ["/data"]}})
    args = build_parser().parse_args(
        ["--config", str(path), "--allow-host-network", "--bind-mount-root", "/mnt/",
         "--seccomp-profile-root", "/srv/seccomp", "--allow-cap", "NET_ADMIN"]
    )  # fmt: skip
    assert build_policy(args) == Policy(
        allow_privileged=True,
        allow_host_network=True,
        bind_mount_allow=("/data", "/mnt"),
        seccomp_profile_allow=(*DEFAULT_POLICY.seccomp_profile_allow, "/srv/seccomp"),
        cap_add_allow=("NET_ADMIN",),
    )


def test_bad_flags_stop_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--bind-mount-root", "data"], ["--allow-cap", "FLY"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
    assert '"data" is not an absolute path' in capsys.readouterr().err


def test_iyclod_stops_on_a_bad_config_with_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path, {"policy": {"allowPrivileged": "yes"}})
    result = subprocess.run(
        [sys.executable, "-m", "iyclo.daemon", "--config", str(config),
         "--state-dir", str(tmp_path / "state"), "--log-file", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f'iyclod: error: {config}: policy.allowPrivileged: expected true or false, got "yes"\n'
    )
    assert not (tmp_path / "state").exists()  # stopped before it touched anything


def _iyclod(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iyclo.daemon", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_iyclod_makes_a_missing_log_directory(tmp_path: Path) -> None:
    """On a fresh host /var/lib/iyclo does not exist yet when the log file is opened."""
    log = tmp_path / "fresh" / "var-lib-iyclo" / "iyclod.log"
    result = _iyclod("--log-file", str(log), "--state-dir", str(tmp_path / "state"),
                     "--socket", str(tmp_path / "s.sock"),
                     "--systemd-bus-address", f"unix:path={tmp_path}/no-bus")  # fmt: skip
    assert "Traceback" not in result.stderr
    assert log.exists()
    assert result.returncode != 0  # no systemd at that address: one line, not a traceback
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("which", ["--log-file", "--state-dir", "--socket"])
def test_iyclod_names_a_path_it_cannot_make_in_one_line(tmp_path: Path, which: str) -> None:
    """A path below a regular file can never be made, not even by root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = {"--log-file": tmp_path / "log", "--state-dir": tmp_path / "state",
             "--socket": tmp_path / "s.sock"}  # fmt: skip
    paths[which] = blocker / "sub" / "x"
    argv = [arg for flag, path in paths.items() for arg in (flag, str(path))]
    result = _iyclod(*argv, "--systemd-bus-address", f"unix:path={tmp_path}/no-bus")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("iyclod: error: ")
    assert str(blocker) in lines[0]
    assert "Not a directory" in lines[0]


def test_the_sample_config_is_the_defaults() -> None:
    """`iyclo system install` writes packaging/iyclo.json as the operator's starting point:
    it must load, and say exactly what the daemon does without it."""
    sample = Path(__file__).resolve().parent.parent / "packaging" / "iyclo.json"
    assert load_config(sample, required=True) == load_config(sample.with_name("absent.json"),
                                                             required=False)  # fmt: skip


def test_iyclod_creates_its_files_for_root_alone(tmp_path: Path) -> None:
    """umask 077 from the start: the JSON socket is widened to 0660 only after it is bound."""
    log = tmp_path / "logs" / "iyclod.log"
    _iyclod("--log-file", str(log), "--state-dir", str(tmp_path / "state"),
            "--socket", str(tmp_path / "s.sock"),
            "--systemd-bus-address", f"unix:path={tmp_path}/no-bus")  # fmt: skip
    assert log.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700


def test_secret_directories_come_from_the_file(tmp_path: Path) -> None:
    assert DEFAULT_POLICY.secret_file_allow == ("/etc/iyclo/secrets",)
    path = _write(tmp_path, {"policy": {"secretFileAllow": ["/run/keys", "/etc/iyclo/s"]}})
    assert load_config(path, required=True).policy.secret_file_allow == (
        "/run/keys", "/etc/iyclo/s",
    )  # fmt: skip
    _write(tmp_path, {"policy": {"secretFileAllow": ["keys"]}})
    with pytest.raises(InvalidError) as info:
        load_config(path, required=True)
    assert info.value.details == [
        f'{path}: policy.secretFileAllow[0]: "keys" is not an absolute path'
    ]
