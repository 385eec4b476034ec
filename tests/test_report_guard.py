"""The report guard, checked by a pytest run in which `ast.parse` fails as CPython's bug
makes it fail: the failing test is reported, the run is not an INTERNALERROR."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INNER = """
import ast

def test_fails_while_ast_is_broken(monkeypatch):
    def broken(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=78, after=133)")
    monkeypatch.setattr(ast, "parse", broken)
    assert 1 + 1 == 3, "the real failure"
"""


def run_inner(tmp_path: Path, *plugins: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(INNER)
    root = Path(__file__).resolve().parent.parent
    args = [arg for plugin in plugins for arg in ("-p", plugin)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(tmp_path), *args, str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, timeout=120, check=False, cwd=root,
    )  # fmt: skip


def test_without_the_guard_the_report_is_lost(tmp_path: Path) -> None:
    """INTERNALERROR on Python 3.11; on 3.13 even printing that fails (its traceback
    module parses source with ast too): either way, no report of the failure."""
    result = run_inner(tmp_path)
    output = result.stdout + result.stderr
    assert "1 failed" not in output
    assert "AST constructor recursion depth mismatch" in output


def test_with_the_guard_the_failure_is_reported(tmp_path: Path) -> None:
    result = run_inner(tmp_path, "tests.report_guard")
    output = result.stdout + result.stderr
    assert "INTERNALERROR" not in output
    assert result.returncode == 1
    assert "the real failure" in output
    assert "1 failed" in output
