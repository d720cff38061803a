"""Tables that fit the console: shorter headers first, then the least important columns
left out, rather than rich squeezing every column until each is one character wide.

A `FitTable` picks its columns when it is rendered, for the width rich offers it (the
terminal's, or COLUMNS when output is not a terminal), so the same object fits a live
display, a Group or a plain `console.print`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# A rich Table with the default box: one rule left of each column and one at the right
# edge, a space of padding either side of each cell.
COLUMN_FRAME = 3
TABLE_FRAME = 1


@dataclass
class Column:
    header: str
    cells: list[str]
    short: str = ""  # the header when the full ones do not fit ("" = the header)
    priority: int = 0  # 0: always shown; the highest numbers are left out first
    justify: str = "left"
    explain: bool = False  # list "short header = header" under the table when abbreviated

    def width(self, header: str) -> int:
        return max([cell_len(header), *(cell_len(c) for c in self.cells)]) + COLUMN_FRAME

    @property
    def brief(self) -> str:
        return self.short or self.header


def table_width(columns: list[Column], headers: list[str]) -> int:
    return TABLE_FRAME + sum(c.width(h) for c, h in zip(columns, headers))


def choose(columns: list[Column], width: int) -> tuple[list[Column], list[str]]:
    """The columns that fit in `width` (in their given order) and the headers they show."""
    if table_width(columns, [c.header for c in columns]) <= width:
        return columns, [c.header for c in columns]
    kept = [c for c in columns if c.priority == 0]
    # Optional columns by priority up to the first that does not fit: a narrow column of
    # little importance never takes the place of a wider, more important one.
    for column in sorted((c for c in columns if c.priority), key=lambda c: c.priority):
        if table_width(kept + [column], [c.brief for c in kept + [column]]) > width:
            break
        kept.append(column)
    shown = [c for c in columns if any(c is k for k in kept)]
    headers = [c.brief for c in shown]
    # Full headers back where the width allows, the cheapest first: the fewer abbreviations the better.
    for i in sorted(range(len(shown)), key=lambda i: shown[i].width(shown[i].header) - shown[i].width(headers[i])):
        candidate = headers[:i] + [shown[i].header] + headers[i + 1:]
        if table_width(shown, candidate) <= width:
            headers = candidate
    return shown, headers


class FitTable:
    """A table of `columns` fitted to the width it is rendered at; `wide`: every column
    with its full header, however wide (print it with `crop=False`)."""

    def __init__(self, columns: list[Column], title: str | None = None, caption: str | None = None,
                 hidden_hint: str = "", wide: bool = False):
        self.columns = columns
        self.title = title
        self.caption = caption
        self.hidden_hint = hidden_hint  # how to see the columns left out
        self.wide = wide

    def natural_width(self) -> int:
        return table_width(self.columns, [c.header for c in self.columns])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.natural_width() if self.wide else options.max_width
        shown, headers = choose(self.columns, width)
        table = Table(title=self.title, title_justify="left", caption=self.caption, caption_justify="left")
        for column, header in zip(shown, headers):
            table.add_column(header, justify=column.justify, no_wrap=True)
        for row in zip(*(c.cells for c in shown)):
            table.add_row(*map(Text, row))  # Text: a "[" in a cell is not rich markup
        yield from console.render(table, options.update_width(width))
        for note in notes(self.columns, shown, headers, self.hidden_hint):
            yield Text(note, style="dim")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(TABLE_FRAME, self.natural_width())


def notes(columns: list[Column], shown: list[Column], headers: list[str], hint: str) -> list[str]:
    """What the abbreviations stand for, and which columns were left out."""
    lines = []
    legend = [f"{h}={c.header}" for c, h in zip(shown, headers) if c.explain and h != c.header]
    if legend:
        lines.append(" ".join(legend))
    hidden = [c.header for c in columns if not any(c is s for s in shown)]
    if hidden:
        lines.append(f"not shown: {', '.join(hidden)}" + (f" ({hint})" if hint else ""))
    return lines


def abbreviate(names: list[str]) -> dict[str, str]:
    """Short headers for parameter names: the initials of snake_case words (batch_size: bs),
    the first letters of one long word; a name whose short form is not unique stays whole."""
    short = {n: _short(n) for n in names}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    return {n: s if counts[s] == 1 else n for n, s in short.items()}


def _short(name: str) -> str:
    if len(name) <= 7:
        return name
    words = [w for w in name.split("_") if w]
    return "".join(w[0] for w in words) if len(words) > 1 else name[:5]


def format_number(value) -> str:
    """3-4 significant digits: 3 below 0.01 and from 1e4 on, where 4 would take a column more."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}"
    return str(value)
