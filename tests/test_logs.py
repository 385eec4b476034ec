"""`iyclo logs` (issue #11): a run's lines are chosen by fields journald sets itself, and
what the journal holds reaches a terminal escaped. The real journal's side, a forged line
logged as uid nobody, is in ``test_policy_host.py``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iyclo.cli.output import terminal_text
from iyclo.core import journal
from tests.fakes.fixtures import Core

ROOT = Path(__file__).parent.parent
JOB = {
    "apiVersion": "iyclo/v1", "kind": "Job", "name": "inky", "network": "none",
    "schedule": {"calendar": "*-*-* 03:00:00"},
    "containers": [{"name": "a", "image": "localhost/busybox:latest", "command": ["true"]}],
}  # fmt: skip
RED = "\x1b[31mred\x1b[0m\tafter a tab\r"


def test_control_characters_are_escaped_and_tabs_kept() -> None:
    assert terminal_text(RED) == "\\x1b[31mred\\x1b[0m\tafter a tab\\x0d"
    assert terminal_text("one\ntwo\x07\x7f\x9b ünïcode") == "one\\x0atwo\\x07\\x7f\\x9b ünïcode"
    assert terminal_text("plain text") == "plain text"


def test_a_run_is_matched_by_trusted_fields_only() -> None:
    """(unit AND invocation, as journald read them from the sender) OR (PID 1 about both):
    no term a client can set alone selects a line."""
    matches = journal.run_matches("iyclo-job-inky.service", "ab" * 16)
    terms = " ".join(matches).split(" + ")
    assert terms == [
        f"_SYSTEMD_UNIT=iyclo-job-inky.service _SYSTEMD_INVOCATION_ID={'ab' * 16}",
        f"_PID=1 UNIT=iyclo-job-inky.service INVOCATION_ID={'ab' * 16}",
    ]
    for term in terms:
        assert any(word.startswith("_") for word in term.split())


async def test_logs_asks_for_trusted_fields_and_prints_escaped(
    core: Core, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, ...]] = []
    entry = {"MESSAGE": RED, "__REALTIME_TIMESTAMP": "1700000000000000"}

    async def journalctl(*args: str) -> str:
        asked.append(args)
        return json.dumps(entry) + "\n" if "_PID=1" in args and "+" in args else ""

    monkeypatch.setattr(journal, "_journalctl", journalctl)
    await core.service.apply(JOB)
    run = await core.service.run_job("inky")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "IYCLO_SOCKET": str(socket_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iyclo.cli", "logs", "inky", *args], capture_output=True,
            text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    shown = await asyncio.to_thread(cli)
    assert (shown.returncode, shown.stdout) == (0, "\\x1b[31mred\\x1b[0m\tafter a tab\\x0d\n")
    (query,) = [a for a in asked if "+" in a]
    assert " ".join(query).endswith(
        " ".join(journal.run_matches("iyclo-job-inky.service", run["invocationId"]))
    )
    assert f"INVOCATION_ID={run['invocationId']}" == query[query.index("+") + 3]
    as_json = await asyncio.to_thread(cli, "--json")
    assert json.loads(as_json.stdout)["entries"][0]["message"] == RED  # JSON escapes itself
