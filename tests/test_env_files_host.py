"""Env files on the real daemon (issue #13): a container's variables from a file under
/etc/iyclo/env, an edited file shown by ``iyclo diff`` and rolled out by ``iyclo apply``,
and the values in no read of either front, as root or as uid nobody."""

from __future__ import annotations

import json
import shlex

import pytest

from iyclo_testhost import Host
from tests.daemon_fixtures import Daemon, fast, pod_manifest, remove

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

PATH = "/etc/iyclo/env/app.env"
FIRST, SECOND = "env-pw-1-c0ffee", "env-pw-2-decaf"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def write_env(host: Host, value: str) -> None:
    line = shlex.quote(f"DB_PASSWORD={value}")
    script = f"umask 077; mkdir -p /etc/iyclo/env; printf '%s\\n' {line} > {PATH}"
    host.run(["sh", "-c", script])


def manifest() -> str:
    doc = fast(pod_manifest("envapp"))
    doc["containers"][0]["envFiles"] = [PATH]
    return json.dumps(doc)


def reads(daemon: Daemon) -> str:
    texts = [json.dumps(daemon.call(m, **p)) for m, p in (
        ("get", {"name": "envapp"}), ("get_manifest", {"name": "envapp"}),
        ("history", {"name": "envapp"}), ("list", {}))]  # fmt: skip
    for who in ([], NOBODY):
        for member, args in (
            ("Get", ("s", "envapp")),
            ("GetManifest", ("su", "envapp", "0")),
            ("Diff", ("s", manifest())),
        ):
            texts.append(daemon.host.run(
                [*who, "busctl", "--json=short", "call", "io.github.iyclo1", "/io/github/iyclo1",
                 "io.github.iyclo1.Manager", member, *args]).stdout)  # fmt: skip
    for via in ("socket", "dbus"):
        texts.append(daemon.cli("inspect", "envapp", via=via).stdout)
    return "\n".join(texts)


def test_an_env_file_is_read_at_apply_diffed_and_rolled_out(daemon: Daemon) -> None:
    host = daemon.host
    write_env(host, FIRST)
    try:
        assert daemon.call("apply", manifest=manifest())["generation"] == 1
        shown = host.run(["podman", "exec", "iyclo-envapp-g1_main", "sh", "-c",
                          'printf %s "$DB_PASSWORD"']).stdout  # fmt: skip
        assert shown == FIRST
        assert daemon.call("diff", manifest=manifest()) == ""
        write_env(host, SECOND)
        diff = daemon.cli("diff", "-f", "-", stdin=manifest())
        assert diff.returncode == 1, diff
        assert f"containers[0].envFiles[0]: {PATH} (changed)" in diff.stdout
        again = daemon.call("apply", manifest=manifest())
        assert (again["generation"], again["changed"]) == (2, True)
        shown = host.run(["podman", "exec", "iyclo-envapp-g2_main", "sh", "-c",
                          'printf %s "$DB_PASSWORD"']).stdout  # fmt: skip
        assert shown == SECOND
        text = reads(daemon)
        assert FIRST not in text
        assert SECOND not in text
        assert SECOND not in host.path("/var/lib/iyclo/state.json").read_text()
        print(
            f"\nenv file: edit shown by diff ({diff.stdout.strip().splitlines()[-1]}), "
            "rolled out as generation 2; values in 0 reads (root and nobody, both fronts)"
        )
    finally:
        remove(daemon, "envapp")
