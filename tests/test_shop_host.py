"""The example app (examples/shop) end to end on a real host (issue #13): web → app →
database over iyclo networks, the database's password an iyclo secret, its data on a
named volume that outlives ``iyclo rm`` and a reboot and goes only with ``--volumes``.

Every figure it measures is printed (run with ``-s``).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from iyclo.errors import ConflictError, InvalidError
from iyclo_testhost import Host, ensure_example_image
from tests.campaign import problems
from tests.daemon_fixtures import Daemon, wait_for

pytestmark = [pytest.mark.host, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
SHOP = sorted((ROOT / "examples" / "shop").glob("*.json"))
POLICY = ROOT / "dbus" / "io.github.iyclo1.conf"
PASSWORD = "shop-pw-9f3c-Never-Shown"
URL = "http://127.0.0.1:18480/cgi-bin/shop"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PODS = ("shop-db", "shop-app", "shop-web")


def write_secret(host: Host) -> None:
    """The password file under the host's /etc/iyclo/secrets (a tmpfs of the test host,
    so written again after a reboot, as a real machine's /etc would still hold it)."""
    target = "/etc/iyclo/secrets/shop-redis-password"
    script = f"umask 077; mkdir -p /etc/iyclo/secrets; printf %s {shlex.quote(PASSWORD)} > {target}"
    host.run(["sh", "-c", script])


def fetch(host: Host, query: str = "", timeout: float = 30) -> str:
    """A page through the web pod's published port, retried (bounded) while it starts."""
    url = f"{URL}?{query}" if query else URL
    deadline = time.monotonic() + timeout
    early = ""
    for _ in range(200):
        result = host.run(["timeout", "2", "busybox", "wget", "-q", "-O", "-", url], check=False)
        if result.returncode == 0 and "note:" in result.stdout:
            return result.stdout
        if not early and result.returncode != 0:
            early = timings(host)
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: no answer in {timeout:.0f}s: rc {result.returncode} "
                                 f"{result.stdout.strip()!r} {result.stderr.strip()}\n"
                                 f"at the first failure:\n{early}\nat the end:\n{timings(host)}\n"
                                 f"{diagnosis(host)}")  # fmt: skip
        time.sleep(0.3)
    raise AssertionError(f"{url}: no answer")


def timings(host: Host) -> str:
    app, web = "iyclo-shop-app-g1_cgi", "iyclo-shop-web-g1_front"
    step = 's=$(date +%s%N); {}; echo "rc $? in $(( ($(date +%s%N) - s) / 1000000 )) ms"'
    checks = (
        (app, "getent ahosts db"),
        (app, "redis-cli -h db PING"),
        (app, "cat /etc/resolv.conf"),
        (web, "getent ahosts app"),
        (web, "busybox wget -q -O - http://app:8080/cgi-bin/app"),
    )
    out = []
    for container, command in checks:
        argv = ["podman", "exec", container, "sh", "-c", step.format(f"timeout 10 {command}")]
        result = host.run(argv, check=False, timeout=30)
        out.append(f"{container} $ {command}: {result.stdout.strip()} {result.stderr.strip()}")
    result = host.run(
        [
            "sh",
            "-c",
            "ps -eo pid,lstart,args | grep [a]ardvark; "
            "ls -l /run/containers/networks/aardvark-dns/ 2>&1; "
            "cat /run/containers/networks/aardvark-dns/* 2>&1",
        ],
        check=False,
    )
    out.append(result.stdout + result.stderr)
    return "\n".join(out)


def diagnosis(host: Host) -> str:
    """What the pods say, for a request that got no answer."""
    app = "iyclo-shop-app-g1_cgi"
    web = "iyclo-shop-web-g1_front"
    checks = (["podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}"],
              ["podman", "exec", app, "getent", "hosts", "db"],
              ["podman", "exec", app, "timeout", "3", "redis-cli", "-h", "db", "PING"],
              ["podman", "exec", app, "timeout", "3", "redis-cli", "-h", "db", "GET", "note"],
              ["podman", "exec", web, "getent", "hosts", "app"],
              ["podman", "exec", web, "cat", "/etc/resolv.conf"],
              ["podman", "exec", web, "timeout", "3", "busybox", "wget", "-q", "-O", "-",
               "http://app:8080/cgi-bin/app"],
              ["podman", "exec", web, "sh", "-c", "ls -l /proc/*/exe"],
              ["podman", "exec", app, "sh", "-c", "ls -l /proc/*/exe"],
              ["podman", "exec", web, "cat", "/proc/net/arp"],
              ["podman", "exec", app, "cat", "/proc/net/arp"],
              ["podman", "inspect", "--format", "{{.Name}} {{range .NetworkSettings.Networks}}"
               "{{.IPAddress}} {{.MacAddress}} {{end}}", app, web, "iyclo-shop-db-g1_redis"],
              ["podman", "logs", "--tail", "5", "iyclo-shop-db-g1_redis"])  # fmt: skip
    out = []
    for argv in checks:
        result = host.run(argv, check=False, timeout=30)
        out.append(f"$ {' '.join(argv[1:])}: {result.returncode} {result.stdout}{result.stderr}")
    return "\n".join(out)


def note(page: str) -> str:
    return next(line for line in page.splitlines() if line.startswith("note:"))[5:].strip()


def apply_shop(daemon: Daemon, only: str = "") -> float:
    started = time.monotonic()
    for path in SHOP:
        if only and only not in path.name:
            continue
        result = daemon.call("apply", manifest=path.read_text())
        assert result["state"] in ("running", "created"), result
    return time.monotonic() - started


def busctl(host: Host, who: list[str], member: str, *args: str) -> str:
    result = host.run(
        [*who, "busctl", "--json=short", "call", "io.github.iyclo1", "/io/github/iyclo1",
         "io.github.iyclo1.Manager", member, *args], check=False,
    )  # fmt: skip
    assert result.returncode == 0, (member, result.stderr)
    return result.stdout


def every_read(daemon: Daemon) -> list[str]:
    """get, inspect, ps, history, diff of every shop manifest: on the JSON socket and the
    CLI over both fronts as root (a deployer), on D-Bus as root and as uid nobody."""
    texts = []
    for path in SHOP:
        manifest = json.loads(path.read_text())
        name, text = manifest["name"], path.read_text()
        for method, params in (
            ("get", {"name": name}),
            ("get_manifest", {"name": name}),
            ("history", {"name": name}),
            ("diff", {"manifest": text}),
        ):
            texts.append(json.dumps(daemon.call(method, **params)))  # fmt: skip
        for who in ([], NOBODY):
            for member, args in (
                ("Get", ("s", name)),
                ("GetManifest", ("su", name, "0")),
                ("History", ("s", name)),
                ("Diff", ("s", text)),
            ):
                texts.append(busctl(daemon.host, who, member, *args))  # fmt: skip
        for via in ("socket", "dbus"):
            for argv in (("inspect", name), ("history", name), ("diff", "-f", str(path))):
                texts.append(daemon.cli(*argv, via=via).stdout)
    for via in ("socket", "dbus"):
        texts.append(daemon.cli("ps", via=via).stdout)
        texts.append(daemon.cli("volumes", via=via).stdout)
    texts.append(busctl(daemon.host, NOBODY, "List"))
    return texts


def volumes(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in daemon.call("volumes")}


def test_the_example_app_end_to_end(fresh_testhost_factory: Any) -> None:
    host = fresh_testhost_factory(extra_dbus_policies=[POLICY])
    started = time.monotonic()
    ensure_example_image(host)
    image_seconds = time.monotonic() - started
    write_secret(host)
    daemon = Daemon(host)
    daemon.start()
    deploy_seconds = apply_shop(daemon)
    page = fetch(host, "set=kept-42")
    assert note(page) == "kept-42", page
    assert page.startswith("web: asked app"), page
    print(f"\nshop: image ready in {image_seconds:.1f}s, 2 networks and 3 pods applied in "
          f"{deploy_seconds:.1f}s; a request web → app → db: {page.splitlines()[1:]}")  # fmt: skip

    # The web pod reaches the data pod by its alias on the internal network; the
    # password is needed there, and the app pod has no route out of it.
    web = "iyclo-shop-web-g1_front"
    ping = host.run(["podman", "exec", web, "redis-cli", "-h", "db", "PING"], check=False)
    assert "NOAUTH" in ping.stdout + ping.stderr, ping
    networks = json.loads(host.run(["podman", "network", "inspect", "iyclo-shop-backend"]).stdout)
    assert networks[0]["internal"] is True
    assert networks[0]["labels"]["io.github.iyclo.kind"] == "Network"
    print(f"shop: web resolves db by alias on iyclo-shop-backend: {ping.stdout.strip()}")

    texts = every_read(daemon)
    assert not [t for t in texts if PASSWORD in t]
    assert PASSWORD not in daemon.log.read_text()
    assert PASSWORD not in host.path("/var/lib/iyclo/state.json").read_text()
    print(f"shop: {len(texts)} reads over both fronts (as root and as nobody): password in 0")

    # A network in use, an unknown network
    with pytest.raises(ConflictError) as in_use:
        daemon.call("remove", name="shop-backend")
    assert in_use.value.message == "network 'shop-backend' is in use by shop-app, shop-db, shop-web"
    ghost = json.loads(SHOP[2].read_text())
    ghost["name"], ghost["networks"] = "shop-ghost", [{"name": "nowhere"}]
    ghost["containers"][0]["volumes"] = []
    with pytest.raises(InvalidError) as unknown:
        daemon.call("apply", manifest=json.dumps(ghost))
    assert unknown.value.message == "networks[0].name: 'nowhere' is not an applied network"
    pods = host.run(["podman", "pod", "ps", "--format", "{{.Name}}"]).stdout.split()
    assert not [p for p in pods if "ghost" in p]
    print(f"shop: rm shop-backend refused: {in_use.value.message}; unknown network: "
          f"{unknown.value.message}")  # fmt: skip

    # rm without --volumes keeps the data for the next apply
    daemon.call("remove", name="shop-db")
    kept = volumes(daemon)["shop-data"]
    assert (kept["owner"], kept["inUse"]) == ("shop-db", False), kept
    assert kept["mountpoint"].endswith("/shop-data/_data")
    apply_shop(daemon, only="db")
    assert note(fetch(host)) == "kept-42"
    print("shop: rm shop-db + apply again: note kept-42 still there")

    # A power cut: the host's /run and its transient units are gone, its disk stays.
    root = host.root
    host.shutdown()
    rebooted = fresh_testhost_factory(root=root, name=host.name, extra_dbus_policies=[POLICY])
    write_secret(rebooted)
    again = Daemon(rebooted)
    started = time.monotonic()
    again.start()
    page = fetch(rebooted)
    back = time.monotonic() - started
    assert note(page) == "kept-42", page
    assert {r["name"]: r["state"] for r in again.call("list")} == {
        "shop-backend": "created", "shop-front": "created",
        **dict.fromkeys(PODS, "running"),
    }  # fmt: skip
    assert problems(rebooted, again.call("list")) == []  # no orphan, networks included
    print(f"shop: after a reboot the note is kept-42, answered {back:.1f}s after iyclod started")

    # rm --volumes (D-Bus RemoveWith, through the CLI) does remove the data
    gone = again.cli("rm", "--volumes", "shop-db", via="dbus")
    assert gone.returncode == 0, gone.stderr
    assert "shop-data" not in volumes(again)
    assert rebooted.run(["podman", "volume", "exists", "shop-data"], check=False).returncode == 1
    apply_shop(again, only="db")
    assert note(fetch(rebooted)) == ""
    print("shop: rm --volumes shop-db + apply again: the note is gone")

    for name in ("shop-web", "shop-app", "shop-db", "shop-front", "shop-backend"):
        again.call("remove", name=name, volumes=True)
    wait_for(lambda: again.call("list") == [], timeout=30, what="everything removed")
    left = rebooted.run(["podman", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    assert not [n for n in left if n.startswith("iyclo-")]
    again.stop()
