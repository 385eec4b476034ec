"""A failing test gets its normal report, even where CPython's `ast` cannot be trusted.

CPython before 3.11.8 and 3.12.1 (Debian 12 has 3.11.2) keeps the AST constructor's
recursion depth in state shared by every caller (cpython#106905): once a parse went wrong,
every later `ast.parse` raises "SystemError: AST constructor recursion depth mismatch".
pytest parses a failing test's source to show it, so that SystemError ended the whole run
as INTERNALERROR and hid the report (measured on Debian 12). When building a report fails
that way, the failure is reported with Python's own traceback instead.
"""

from __future__ import annotations

import traceback
from collections.abc import Generator
from typing import Any

import pytest
from _pytest.reports import TestReport

AST_BUG = "AST constructor recursion depth mismatch"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    try:
        outcome.get_result()
    except SystemError as exc:
        if AST_BUG not in str(exc) or call.excinfo is None:
            raise
        error = call.excinfo.value
        longrepr = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        outcome.force_result(
            TestReport(
                item.nodeid,
                item.location,
                dict.fromkeys(item.keywords, 1),
                "failed",
                longrepr + f"\n(shown as a plain traceback: pytest's own report hit {exc})",
                call.when,
                duration=call.duration,
                start=call.start,
                stop=call.stop,
                user_properties=item.user_properties,
            )
        )
