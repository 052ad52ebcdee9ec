"""What this side prints of what a device said: one line, escaped, cut, in aligned columns."""

from __future__ import annotations

from collections.abc import Sequence

MAX_CELL = 300
"""Characters of one printed value; a device's texts (model id, error) may be as long as it likes."""


def printable(text: object, limit: int = MAX_CELL) -> str:
    """``text`` safe for a terminal, on one line: control and format characters (escape sequences,
    newlines, bidirectional overrides) are shown escaped, as ``\\x1b``, and long text is cut."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded.

    Every cell goes through :func:`printable`: most of them are what a device said.
    """
    shown = [[printable(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in shown)
    return "\n".join(line.rstrip() for line in lines)
