"""The CLI's offline commands, run as a user would: a real process, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def iyclo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iyclo.cli", *args], capture_output=True, text=True, check=False
    )


def test_validate_examples_passes() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.json"))
    result = iyclo("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert "valid Pod 'web'" in result.stdout
    assert "valid Job 'nightly-backup'" in result.stdout


def test_validate_lists_every_error_of_every_file() -> None:
    bad = ROOT / "tests/manifests/broken/07-bad-size.json"
    also = ROOT / "tests/manifests/broken/14-bad-calendar.json"
    result = iyclo("validate", str(ROOT / "examples/web.json"), str(bad), str(also))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f'{bad}: containers[1].resources.memory: "12Q" is not a size' in lines[0]
    assert len(lines) == 5
    assert any('"every tuesday-ish" is not a valid calendar expression' in line for line in lines)


def test_validate_json_output_and_missing_file() -> None:
    result = iyclo("validate", "--json", "/nonexistent.json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == [
        {"file": "/nonexistent.json", "valid": False, "errors": ["No such file or directory"]}
    ]


def test_schema_is_json() -> None:
    result = iyclo("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "iyclo manifest"


def test_version_without_a_daemon_says_so() -> None:
    result = iyclo("--socket", "/nonexistent/iyclo.sock", "version")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "client: iyclo 0.1.0",
        "daemon: not reachable (cannot reach the iyclo daemon at /nonexistent/iyclo.sock: "
        "No such file or directory)",
    ]


def test_commands_without_a_daemon_fail_in_one_line() -> None:
    result = iyclo("--socket", "/nonexistent/iyclo.sock", "ps")
    assert result.returncode == 1
    assert result.stderr == (
        "iyclo: error: cannot reach the iyclo daemon at /nonexistent/iyclo.sock: "
        "No such file or directory\n"
    )


def test_shell_completion_script() -> None:
    result = iyclo("completion", "bash")
    assert result.returncode == 0
    assert "_IYCLO_COMPLETE" in result.stdout
