"""A private ``dbus-daemon`` for tests, independent of pytest.

Fake services (see ``tests/fakes/systemd.py``) are real D-Bus objects, so the
adapter under test exchanges real messages through a real bus daemon; a
private one keeps tests off the machine's system and session buses.

The daemon gets its own minimal configuration rather than ``--session``: the
stock session configuration pulls in ``session.d`` drop-ins and service
directories, so bus activation could start programs of this machine. Here,
anyone may own any name and nothing is activatable.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">{users}
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """One ``dbus-daemon`` listening on a unix socket in its own temporary directory.

    ``with PrivateBus() as bus: connect(bus.address)``. ``start`` blocks until
    the daemon printed its address, i.e. until it accepts connections.
    """

    def __init__(self, startup_timeout: float = 10.0, *, any_user: bool = False) -> None:
        self._startup_timeout = startup_timeout
        self._any_user = any_user
        """Let every uid connect (a bus daemon lets only its own by default), with the
        bus's directory open to all: for tests that call as another user."""
        self._tmpdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(os.devnull)
        self.address = ""

    def start(self) -> str:
        """Start the daemon and return its D-Bus address."""
        if self._process is not None:
            return self.address
        binary = shutil.which("dbus-daemon")
        if binary is None:
            raise RuntimeError("dbus-daemon is not installed (Debian package 'dbus')")
        # Unix socket paths are limited to ~107 bytes, so stay short and out of pytest's tmp.
        self._tmpdir = Path(tempfile.mkdtemp(prefix="iyclo-bus-"))
        socket_path = self._tmpdir / "bus"
        config = self._tmpdir / "bus.conf"
        users = '\n    <allow user="*"/>' if self._any_user else ""
        config.write_text(_CONFIG.format(socket=socket_path, users=users))
        if self._any_user:
            self._tmpdir.chmod(0o755)
        self._log = self._tmpdir / "bus.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [binary, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        try:
            self.address = self._read_address()
        except BaseException:
            self.stop()
            raise
        return self.address

    def _read_address(self) -> str:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        ready, _, _ = select.select([stdout], [], [], self._startup_timeout)
        if not ready:
            raise RuntimeError(f"dbus-daemon printed no address within {self._startup_timeout}s")
        line = os.read(stdout.fileno(), 4096).decode().strip()
        if not line.startswith("unix:"):
            self._process.wait(timeout=5)
            raise RuntimeError(f"dbus-daemon failed to start: {self._log.read_text().strip()!r}")
        # The daemon appends ",guid=..."; keep it, clients accept it.
        return line.splitlines()[0]

    def stop(self) -> None:
        """Stop the daemon and remove its directory; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
            try:
                process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
