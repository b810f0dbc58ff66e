"""Tables for people: aligned text for terminals, Markdown for reports and the Prefect UI.

Every table the tools print goes through here, so a number reads the same everywhere: a missing
value is "n/a", floats get the decimals their column asks for, and nothing is cut off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MISSING = "n/a"


@dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header, and how a value becomes text.

    `format` is a format spec for numbers (".3f"), a function of the value, or None (integers as
    they are, other numbers with 3 decimals); `scale` multiplies numbers first (bytes -> kB is 1e-3).
    """

    key: str
    header: str | None = None
    format: str | Callable[[object], str] | None = None  # None: integers as they are, other numbers ".3f"
    scale: float = 1.0
    align: str = "right"
    missing: str = MISSING

    @property
    def title(self) -> str:
        return self.header or self.key

    def text(self, value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.missing
        if callable(self.format):
            return self.format(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return str(value)
        scaled = value if self.scale == 1.0 else value * self.scale  # an int stays an int for "d"
        if self.format is None:
            return str(scaled) if isinstance(scaled, int) else format(scaled, ".3f")
        return format(scaled, self.format)


def as_columns(columns: Sequence[Column | str]) -> list[Column]:
    """Plain strings are columns of that key with the default format."""
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def cells(rows: Sequence[Mapping], columns: Sequence[Column | str]) -> list[list[str]]:
    """The header row and one row of text per input row."""
    columns = as_columns(columns)
    return [[c.title for c in columns]] + [[c.text(row.get(c.key)) for c in columns] for row in rows]


def text_table(rows: Sequence[Mapping], columns: Sequence[Column | str], rule: bool = False) -> str:
    """Aligned text, two spaces between columns; `rule` underlines the header."""
    columns = as_columns(columns)
    grid = cells(rows, columns)
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c.align == "right" else v.ljust(w) for v, w, c in zip(values, widths, columns)).rstrip()

    lines = [line(values) for values in grid]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[Column | str]) -> str:
    """A GitHub-flavoured Markdown table (reports, Prefect markdown artifacts)."""
    columns = as_columns(columns)
    grid = cells(rows, columns)
    separator = ["---:" if c.align == "right" else "---" for c in columns]
    return "\n".join("| " + " | ".join(values) + " |" for values in [grid[0], separator, *grid[1:]])


def formatted_rows(rows: Sequence[Mapping], columns: Sequence[Column | str]) -> list[dict[str, str]]:
    """Rows of text keyed by header: what a Prefect table artifact should show (no raw floats)."""
    columns = as_columns(columns)
    return [dict(zip([c.title for c in columns], values)) for values in cells(rows, columns)[1:]]
