"""The one shape every benchmark reports in: rows of (result, baseline, ratio), and how they print.

Each benchmark module has a ``measure(...)`` that returns a small dataclass of its numbers with a
``rows()`` method; its own command prints those rows (plus any detail it measured), and
``python -m benchmarks table`` prints the rows of all of them as one table. So a number is
measured by exactly one function, whichever command shows it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One measured number next to the baseline it should be read against.

    ``same_run`` is False only for a published reference figure (the seed's), which could not be
    measured here; the table says so instead of pretending it was.
    """

    bench: str
    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    same_run: bool = True

    @property
    def ratio(self) -> float | None:
        """result / baseline (a speed-up for rates, a fraction for costs); None without a baseline."""
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline):
            return None
        return self.value / self.baseline


@dataclass
class Table:
    """Rows of several benchmarks plus what a reader needs to judge them (date, machine, load)."""

    rows: list[Row]
    context: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


HEADERS = ("benchmark", "measure", "result", "baseline", "result / baseline")


def number(value: float) -> str:
    """Three significant figures or whole numbers with thousands separators, as a reader wants them."""
    if math.isnan(value):
        return "n/a"
    size = abs(value)
    if size >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cells(row: Row) -> tuple[str, str, str, str, str]:
    result = f"{number(row.value)} {row.unit}".rstrip()
    if row.baseline is None:
        baseline = row.baseline_name or "—"
    else:
        published = "" if row.same_run else ", published, not this run"
        baseline = f"{f'{number(row.baseline)} {row.unit}'.rstrip()} ({row.baseline_name}{published})"
    ratio = "—" if row.ratio is None else f"{number(row.ratio)}x"
    return row.bench, row.measure, result, baseline, ratio


def render_text(rows: list[Row]) -> str:
    """An aligned plain-text table (numbers right-aligned) for the terminal."""
    lines = [HEADERS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    out = []
    for n, line in enumerate(lines):
        parts = [
            text.rjust(width) if i in (2, 4) and n else text.ljust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    """The table as Markdown (README's ``## Benchmarks`` section holds one of these)."""
    out = [f"- {key}: {value}" for key, value in table.context.items()]
    out += ["", "| " + " | ".join(HEADERS) + " |", "|---|---|--:|---|--:|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in table.rows]
    out += [""] + [f"{note}" for note in table.notes]
    return "\n".join(out).rstrip() + "\n"


def to_json(table: Table) -> str:
    """Every number unrounded, with its ratio, for tools that compare runs."""
    rows = [{**asdict(r), "ratio": r.ratio} for r in table.rows]
    return json.dumps({"context": table.context, "rows": rows, "notes": table.notes}, indent=2) + "\n"
