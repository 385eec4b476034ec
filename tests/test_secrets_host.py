"""Secrets end to end: real Podman secrets, real containers reading them, the real daemon.

A pod reads its password from a file Podman mounts and from an environment variable
Podman sets, both from files under the host's /etc/iyclo/secrets (the default
secretFileAllow); no reply of the daemon shows the value, a new generation gets new
secrets and drops the old ones, and a failed apply leaves none behind.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

import pytest

from iyclo.errors import IycloError
from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, fast, pod_manifest, remove, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

SECRET_DIR = "/etc/iyclo/secrets"
VALUE = "pw-4a1e-Very-Secret"
ROTATED = "pw-77c0-Rotated-Secret"


def write_secret(host: Host, name: str, value: str) -> None:
    """A root-only file under the host's private /etc/iyclo (a tmpfs of the test host)."""
    path = f"{SECRET_DIR}/{name}"
    script = f"umask 077; mkdir -p {SECRET_DIR}; printf %s {shlex.quote(value)} > {path}"
    host.run(["sh", "-c", script])


def secret_names(host: Host) -> list[str]:
    out = host.run(["podman", "secret", "ls", "--format", "{{.Name}}"]).stdout
    return sorted(name for name in out.split() if name.startswith("iyclo-"))


def vault(port: int = 18093) -> dict[str, Any]:
    manifest = fast(pod_manifest("vault"))
    main, side = manifest["containers"]
    main["secrets"] = [{"name": "db-password", "file": f"{SECRET_DIR}/db-password",
                        "target": "/run/secrets/db-password"}]  # fmt: skip
    side["secrets"] = [{"name": "db-password", "file": f"{SECRET_DIR}/db-password",
                        "env": "DB_PASSWORD"}]  # fmt: skip
    main["command"] = ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    main["ports"] = [{"containerPort": 8080, "hostPort": port, "hostIp": "127.0.0.1"}]
    return manifest


def read_in(host: Host, container: str, script: str) -> str:
    return host.run(["podman", "exec", container, "sh", "-c", script]).stdout.strip()


def test_a_pod_reads_its_secrets_and_no_reply_shows_them(daemon: Daemon) -> None:
    host = daemon.host
    write_secret(host, "db-password", VALUE)
    try:
        result = daemon.call("apply", manifest=json.dumps(vault()))
        assert (result["generation"], result["state"]) == (1, "running")
        main, side = "iyclo-vault-g1_main", "iyclo-vault-g1_side"
        assert read_in(host, main, "cat /run/secrets/db-password") == VALUE
        assert read_in(host, main, "stat -c '%a %u' /run/secrets/db-password") == "400 0"
        assert read_in(host, side, 'printf %s "$DB_PASSWORD"') == VALUE
        assert secret_names(host) == ["iyclo-vault-g1_main.db-password",
                                      "iyclo-vault-g1_side.db-password"]  # fmt: skip
        labels = json.loads(
            host.run(["podman", "secret", "inspect", "iyclo-vault-g1_main.db-password"]).stdout
        )[0]["Spec"]["Labels"]
        assert labels["io.github.iyclo.pod"] == "vault"
        assert labels["io.github.iyclo.generation"] == "1"

        # a changed file is a new generation with new secrets; the old ones go
        write_secret(host, "db-password", ROTATED)
        again = daemon.call("apply", manifest=json.dumps(vault()))
        assert (again["generation"], again["changed"]) == (2, True)
        assert read_in(host, "iyclo-vault-g2_main", "cat /run/secrets/db-password") == ROTATED
        assert read_in(host, "iyclo-vault-g2_side", 'printf %s "$DB_PASSWORD"') == ROTATED
        assert secret_names(host) == ["iyclo-vault-g2_main.db-password",
                                      "iyclo-vault-g2_side.db-password"]  # fmt: skip
        unchanged = daemon.call("apply", manifest=json.dumps(vault()))
        assert (unchanged["generation"], unchanged["changed"]) == (2, False)

        replies = [
            daemon.call("get", name="vault"),
            daemon.call("get_manifest", name="vault"),
            daemon.call("get_manifest", name="vault", generation=1),
            daemon.call("history", name="vault"),
            daemon.call("diff", manifest=json.dumps(fast(pod_manifest("vault")))),
            daemon.call("list"),
        ]
        text = json.dumps(replies)
        log = daemon.log.read_text()
        for value in (VALUE, ROTATED):
            assert value not in text
            assert value not in log
            assert value not in host.path("/var/lib/iyclo/state.json").read_text()
    finally:
        remove(daemon, "vault")
    assert secret_names(host) == []


def test_a_failed_apply_leaves_no_secret(daemon: Daemon) -> None:
    host = daemon.host
    write_secret(host, "db-password", VALUE)
    blocker = fast(pod_manifest("blocker"))
    blocker["containers"][0]["command"] = ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    blocker["containers"][0]["ports"] = [
        {"containerPort": 8080, "hostPort": 18094, "hostIp": "127.0.0.1"}
    ]
    try:
        daemon.call("apply", manifest=json.dumps(blocker))
        # the secrets and the pod are made; the start fails on the taken port
        with pytest.raises(IycloError, match="address already in use"):
            daemon.call("apply", manifest=json.dumps(vault(port=18094)))
        assert secret_names(host) == []
        # and a source the policy refuses creates nothing at all
        refused = vault()
        refused["containers"][1]["secrets"][0]["file"] = "/etc/passwd"
        with pytest.raises(IycloError, match=r"containers\[1\]\.secrets\[0\]\.file: refused"):
            daemon.call("apply", manifest=json.dumps(refused))
        assert secret_names(host) == []
    finally:
        remove(daemon, "vault")
        remove(daemon, "blocker")


def test_a_job_run_reads_its_secrets(daemon: Daemon) -> None:
    """A job's run gets its secrets the same way; it prints only their digests."""
    host = daemon.host
    write_secret(host, "db-password", VALUE)
    script = 'sha256sum /run/secrets/pw; printf %s "$PW" | sha256sum'
    backup = {
        "apiVersion": "iyclo/v1", "kind": "Job", "name": "vaultjob", "network": "none",
        "schedule": {"calendar": "*-01-01 00:00:00"},
        "containers": [{"name": "main", "image": "localhost/busybox:latest",
                        "command": ["sh", "-c", script], "stopTimeout": "1s",
                        "secrets": [
                            {"name": "pw", "file": f"{SECRET_DIR}/db-password",
                             "target": "/run/secrets/pw", "mode": "0440", "uid": 1000},
                            {"name": "pw-env", "file": f"{SECRET_DIR}/db-password",
                             "env": "PW"}]}],
    }  # fmt: skip
    try:
        daemon.call("apply", manifest=json.dumps(backup))
        assert secret_names(host) == ["iyclo-vaultjob-g1_main.pw", "iyclo-vaultjob-g1_main.pw-env"]
        daemon.call("run_job", name="vaultjob")
        runs = wait_for(
            lambda: [r for r in daemon.call("runs", name="vaultjob") if r["state"] != "running"],
            what="the run to end",
        )
        assert runs[0]["state"] == "succeeded"
        digest = hashlib.sha256(VALUE.encode()).hexdigest()
        output = json.dumps(daemon.call("logs", name="vaultjob", run=1))
        assert output.count(digest) == 2
        assert VALUE not in output
    finally:
        remove(daemon, "vaultjob", purge_history=True)
    assert secret_names(host) == []


def test_a_credential_of_iyclod_becomes_a_secret(daemon: Daemon) -> None:
    """``credential``: systemd hands iyclod the file (LoadCredential=) in
    $CREDENTIALS_DIRECTORY, and iyclod hands it on as a Podman secret."""
    host = daemon.host
    host.run(["sh", "-c", f"umask 077; printf %s {VALUE} > /run/iyclo-test-credential"])
    manifest = fast(pod_manifest("credpod"))
    manifest["containers"][1]["secrets"] = [
        {"name": "token", "credential": "db.pw", "env": "TOKEN"}
    ]
    daemon.stop()
    # systemd mounts a unit's credentials in a child mount namespace and moves them to
    # /run/credentials/<unit>, which reaches the unit only if /run propagates mounts, as it
    # does on a booted machine (systemd makes / shared); the test host's /run is private
    # (measured on 252 and 257: an empty or missing directory), so for this test it is not.
    host.run(["mount", "--make-shared", "/run"])
    try:
        daemon.start(properties=["LoadCredential=db.pw:/run/iyclo-test-credential"])
        daemon.call("apply", manifest=json.dumps(manifest))
        assert read_in(host, "iyclo-credpod-g1_side", 'printf %s "$TOKEN"') == VALUE
        assert VALUE not in json.dumps(daemon.call("get_manifest", name="credpod"))
        remove(daemon, "credpod")
        assert secret_names(host) == []
    finally:
        remove(daemon, "credpod")
        daemon.stop()
        host.run(["mount", "--make-private", "/run"])
        daemon.start()
    # without its credentials, the daemon refuses the manifest with one line
    with pytest.raises(IycloError, match=r"containers\[1\]\.secrets\[0\]\.credential: refused"):
        daemon.call("apply", manifest=json.dumps(manifest))
    assert secret_names(host) == []
