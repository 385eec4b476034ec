"""What a passing test prints, its figures, shown in the run's output.

The campaigns, fuzzers and host tests print what they measured (cases tried, kills,
requests made, failures 0) so a run can be quoted. pytest keeps a passing test's output to
itself, and under pytest-xdist (``scripts/test`` runs the fast tests beside the host
tests) a worker has no terminal at all, so the controller writes each passing test's
captured stdout after it, from the report the worker sent. An in-process daemon logs to
stderr, as iyclod does, so stdout holds only what the tests print.
"""

from __future__ import annotations

import sys

import pytest
import structlog
from _pytest.reports import TestReport

_config: list[pytest.Config] = []
_failed: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    _config.append(config)
    # sys.stderr looked up at each line: pytest's capture replaces it per test
    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))


def figures(report: TestReport) -> list[str]:
    """The lines the test printed, in every phase."""
    return [
        line
        for name, text in report.sections
        if name.startswith("Captured stdout")
        for line in text.splitlines()
        if line.strip()
    ]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: TestReport) -> None:
    if report.when == "call" and not report.passed:
        _failed.add(report.nodeid)
    if report.when != "teardown" or report.nodeid in _failed or not _config:
        return
    reporter = _config[0].pluginmanager.getplugin("terminalreporter")
    lines = figures(report)
    if reporter is None or not lines:  # an xdist worker has no terminal: its controller shows them
        return
    reporter.write("\n")  # after the progress dots
    for line in lines:
        reporter.write_line(line)
