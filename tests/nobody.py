"""Python code that tests run as uid nobody, made readable to nobody.

A checkout under /root (mode 0700) with its venv is out of nobody's reach, so a test that
runs iyclo as nobody would fail with "Permission denied" only on such a clone. This copies
what those scripts import (iyclo, the tests' fakes and the third-party packages they load)
into a world-readable directory, to run with the real interpreter behind the venv.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
IMPORTS = (
    "iyclo.api.dbus, iyclo.client.dbus, iyclo.client.jsonrpc, iyclo.core.service, iyclo.errors, "
    "iyclo.store"
)
_LIST_MODULES = f"""
import json, sys
import {IMPORTS}
print(json.dumps(sorted({{m.__file__ for m in list(sys.modules.values())
                         if getattr(m, "__file__", None)}})))
"""


@attrs.frozen
class NobodyPython:
    python: str
    pythonpath: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": self.pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="session")
def nobody_python() -> Iterator[NobodyPython]:
    site = Path(sysconfig.get_paths()["purelib"])
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{ROOT}"}
    files = json.loads(
        subprocess.run(
            [sys.executable, "-c", _LIST_MODULES], env=env, capture_output=True, text=True,
            check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    tops = {Path(f).relative_to(site).parts[0] for f in files if Path(f).is_relative_to(site)}
    top = Path(tempfile.mkdtemp(prefix="iyclo-nobody-"))
    try:
        shutil.copytree(SRC / "iyclo", top / "iyclo")
        shutil.copytree(ROOT / "tests", top / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        for name in sorted(tops):
            source = site / name
            if source.is_dir():
                shutil.copytree(source, top / "site" / name)
            else:
                (top / "site").mkdir(exist_ok=True)
                shutil.copy2(source, top / "site" / name)
        for path in (top, *top.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield NobodyPython(os.path.realpath(sys.executable), f"{top}{os.pathsep}{top / 'site'}")
    finally:
        shutil.rmtree(top)


NOBODY = 65534

_CLIENT = """
import json, sys
from iyclo.errors import IycloError
transport, address = sys.argv[1:]
try:
    if transport == "socket":
        from iyclo.client.jsonrpc import JsonRpcClient
        client = JsonRpcClient(address, timeout=10)
    else:
        from iyclo.client.dbus import DBusClient
        client = DBusClient(bus_address=address, timeout=10)
except IycloError as exc:
    print(json.dumps({"connect": type(exc).__name__, "message": exc.message}))
    sys.exit(0)
for line in sys.stdin:
    method, params = json.loads(line)
    try:
        print(json.dumps({"ok": client.call(method, **params)}))
    except IycloError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": exc.message}))
client.close()
"""


async def calls_as_nobody(
    nobody_python: NobodyPython,
    transport: str,
    address: str,
    requests: list[tuple[str, dict[str, Any]]],
    *,
    gid: int = NOBODY,
) -> list[dict[str, Any]]:
    """Each request made by iyclo's own client (``transport`` "socket": the JSON socket at
    ``address``; "dbus": the bus at ``address``) running as uid nobody with group ``gid``:
    ``{"ok": result}``, ``{"error": type, "message": …}``, or one ``{"connect": …}`` when
    it could not even connect."""
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups",
        nobody_python.python, "-c", _CLIENT, transport, address,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=nobody_python.env(),
    )  # fmt: skip
    stdin = "".join(json.dumps(r) + "\n" for r in requests).encode()
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode == 0, err.decode()
    replies: list[dict[str, Any]] = [json.loads(line) for line in out.decode().splitlines()]
    return replies
