"""Pytest fixtures that boot real test hosts (see `tools/iyclo_testhost.py`).

Load them from a conftest with `pytest_plugins = ["tests.host_fixtures"]` (or
`from tests.host_fixtures import *`). Tests that use them should carry `@pytest.mark.host`.

Hosts are skipped only when the machine cannot boot one at all (`TestHostUnavailable`); set
`IYCLO_TESTHOST_REQUIRED=1` to turn that skip into a failure in CI, where the host must work.
Every root lives under `/var/lib/iyclo-testhost/pytest-<pid>/` (never under /tmp: the host
mounts its own /tmp) and is deleted at the end of the session unless `IYCLO_TESTHOST_KEEP=1`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

import pytest

from iyclo_testhost import (
    DEFAULT_BASE,
    Host,
    TestHostUnavailable,
    boot,
    check_available,
    ensure_busybox_image,
    hidden_binds,
)

__all__ = ["HostFactory", "fresh_testhost_factory", "podman_major", "testhost", "testhost_base"]

BUSYBOX_TAG = "localhost/busybox:latest"
# The daemon runs inside hosts from this checkout and its venv: keep them visible there
# when they live under a path the host makes private (a clone in /tmp).
CHECKOUT_BINDS = hidden_binds(
    Path(__file__).resolve().parent.parent, Path(sys.prefix), Path(os.path.realpath(sys.executable))
)
_counter = itertools.count(1)


def podman_major(host: Host) -> int:
    """The major version of the host's Podman: 4 on Debian 12, 5 on Debian 13."""
    return int(host.run(["podman", "version", "--format", "{{.Server.Version}}"]).stdout[0])


def _unavailable(error: TestHostUnavailable) -> NoReturn:
    if os.environ.get("IYCLO_TESTHOST_REQUIRED") == "1":
        pytest.fail(f"test host required but unavailable: {error}", pytrace=False)
    pytest.skip(f"test host unavailable: {error}")


def _unique_name() -> str:
    """Host names double as cgroup names: unique per process so sessions can run at once."""
    return f"t{os.getpid()}-{next(_counter)}"


class HostFactory(Protocol):
    def __call__(
        self,
        *,
        root: Path | None = None,
        name: str | None = None,
        extra_dbus_policies: Sequence[Path] = (),
        busybox: bool = True,
    ) -> Host: ...


@pytest.fixture(scope="session")
def testhost_base() -> Iterator[Path]:
    """This session's directory for host roots, removed at the end of the session."""
    base = DEFAULT_BASE / f"pytest-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    yield base
    if os.environ.get("IYCLO_TESTHOST_KEEP") != "1":
        shutil.rmtree(base)


@pytest.fixture(scope="session")
def testhost(testhost_base: Path) -> Iterator[Host]:
    """One host for the whole session, with `localhost/busybox:latest` imported.

    Shared: tests must not leave it in a state that changes what other tests see (stop the
    units and remove the containers they start; use `fresh_testhost_factory` otherwise).
    """
    try:
        check_available()
        host = boot(testhost_base / "session", name=_unique_name(), binds=CHECKOUT_BINDS)
    except TestHostUnavailable as e:
        _unavailable(e)
    with host:
        ensure_busybox_image(host, BUSYBOX_TAG)
        yield host


@pytest.fixture
def fresh_testhost_factory(testhost_base: Path) -> Iterator[HostFactory]:
    """Boot throwaway hosts; all are shut down and their roots removed after the test.

    `factory(root=old.root)` after `old.shutdown()` reboots onto the same disk.
    """
    try:
        check_available()
    except TestHostUnavailable as e:
        _unavailable(e)
    hosts: list[Host] = []
    roots: set[Path] = set()

    def factory(
        *,
        root: Path | None = None,
        name: str | None = None,
        extra_dbus_policies: Sequence[Path] = (),
        busybox: bool = True,
    ) -> Host:
        name = name or _unique_name()
        root = root or testhost_base / name
        roots.add(root)
        host = boot(root, name=name, extra_dbus_policies=extra_dbus_policies, binds=CHECKOUT_BINDS)
        hosts.append(host)
        if busybox:
            ensure_busybox_image(host, BUSYBOX_TAG)
        return host

    yield factory

    errors: list[BaseException] = []
    for host in hosts:
        try:
            host.shutdown()
        except Exception as e:  # tear down every host, then report the first failure
            errors.append(e)
    if os.environ.get("IYCLO_TESTHOST_KEEP") != "1":
        for root in roots:
            shutil.rmtree(root, ignore_errors=bool(errors))
    if errors:
        raise errors[0]
