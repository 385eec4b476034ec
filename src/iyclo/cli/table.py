"""The CLI's tables, written as plain aligned columns (as ``podman ps`` writes them).

rich laid them out before: importing it cost ~40 ms of every ``iyclo ps`` and laying out
200 rows ~400 ms more, when what is shown is a few columns of short words. Colour (a
state's) and a bold header are added only on a terminal, and never with ``NO_COLOR``.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple, TextIO

from iyclo.cli.output import terminal_text

_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33"}


class Cell(NamedTuple):
    """A cell's text and the style (``_SGR``) it is shown in on a terminal."""

    text: str
    style: str = ""


class Table:
    def __init__(self, *columns: str) -> None:
        self.rows: list[list[Cell]] = [[Cell(c, "bold") for c in columns]]

    def add_row(self, *cells: str | Cell) -> None:
        self.rows.append([c if isinstance(c, Cell) else Cell(c) for c in cells])

    def lines(self, *, colour: bool) -> list[str]:
        """Each row as one line: columns two spaces apart, the last one not padded; every
        text made safe for a terminal (it may come from a manifest or a journal)."""
        rows = [[c._replace(text=terminal_text(c.text)) for c in row] for row in self.rows]
        widths = [max(len(row[i].text) for row in rows) for i in range(len(rows[0]))]
        lines = []
        for row in rows:
            cells = []
            for index, cell in enumerate(row):
                pad = " " * (widths[index] - len(cell.text)) if index < len(row) - 1 else ""
                shown = cell.text
                if colour and cell.style:
                    shown = f"\x1b[{_SGR[cell.style]}m{shown}\x1b[0m"
                cells.append(shown + pad)
            lines.append("  ".join(cells).rstrip())
        return lines

    def print(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        colour = stream.isatty() and "NO_COLOR" not in os.environ
        stream.write("".join(line + "\n" for line in self.lines(colour=colour)))
