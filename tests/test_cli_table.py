"""The CLI's plain tables (``cli.table``): aligned, safe for a terminal, coloured only
on one, and laid out without rich (issue #15: rich cost ``iyclo ps`` ~400 ms at 200 pods)."""

from __future__ import annotations

import io
import subprocess
import sys

from iyclo.cli.table import Cell, Table


def test_columns_are_aligned_and_the_last_is_not_padded() -> None:
    table = Table("NAME", "STATE", "UNIT")
    table.add_row("web", Cell("running", "green"), "iyclo-pod-web.service")
    table.add_row("database", Cell("failed", "red"), "u")
    assert table.lines(colour=False) == [
        "NAME      STATE    UNIT",
        "web       running  iyclo-pod-web.service",
        "database  failed   u",
    ]


def test_colour_only_when_asked_and_control_characters_are_shown_not_sent() -> None:
    table = Table("NAME")
    table.add_row(Cell("a\x1b]0;x\x07", "red"))
    plain, coloured = table.lines(colour=False), table.lines(colour=True)
    assert plain == ["NAME", "a\\x1b]0;x\\x07"]
    assert coloured == ["\x1b[1mNAME\x1b[0m", "\x1b[31ma\\x1b]0;x\\x07\x1b[0m"]
    stream = io.StringIO()  # not a terminal
    table.print(stream)
    assert "\x1b[" not in stream.getvalue()


def test_ps_table_of_200_rows_imports_no_rich() -> None:
    code = (
        "import sys; from iyclo.cli.formats import print_status_table as p;"
        "p([{'name': f'p{i}', 'kind': 'Pod', 'state': 'running'} for i in range(200)]);"
        "sys.stderr.write(str(sorted(m for m in sys.modules if m.split('.')[0] == 'rich')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stderr == "[]"
    assert len(result.stdout.splitlines()) == 201
