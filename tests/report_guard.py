"""A failing test gets its normal report, even where CPython's `ast` cannot be trusted.

CPython before 3.11.8 and 3.12.1 (Debian 12 has 3.11.2) keeps the AST constructor's
recursion depth in state shared by every caller (cpython#106905): once a parse went wrong,
every later `ast.parse` raises "SystemError: AST constructor recursion depth mismatch".
pytest parses a failing test's source to show it, so that SystemError ended the whole run
as INTERNALERROR and hid the report (measured on Debian 12). When building a report fails
that way, the failure is reported with Python's own traceback instead.
"""

from __future__ import annotations

import linecache
import traceback
from collections.abc import Generator
from typing import Any

import pytest
from _pytest.reports import TestReport

AST_BUG = "AST constructor recursion depth mismatch"


def plain_traceback(error: BaseException) -> str:
    """The traceback without `traceback.format_exception`, which also parses source with
    `ast` (for its "~~~^^^" markers, Python 3.11+) and so fails the same way."""
    lines = ["Traceback (most recent call last):"]
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}')
        if source := linecache.getline(code.co_filename, lineno).strip():
            lines.append(f"    {source}")
    lines.append(f"{type(error).__qualname__}: {error}")
    return "\n".join(lines) + "\n"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    try:
        outcome.get_result()
    except SystemError as exc:
        if AST_BUG not in str(exc) or call.excinfo is None:
            raise
        longrepr = plain_traceback(call.excinfo.value)
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
