"""`tune-adapter spaces`: the shipped search spaces, their parameters, baseline and flags."""

from __future__ import annotations


def spaces():
    """List the shipped search spaces (`search --space NAME`): parameters, BASELINE, flag defaults."""
    from rich.padding import Padding
    from rich.text import Text

    from ..space import SHIPPED_DIR, load_space, probe_space, shipped_spaces
    from ..views.display import console

    for name in shipped_spaces():
        space = load_space(name)
        console.print(name, style="bold", highlight=False)
        for part in (Text(_description(space)), _parameters_table(probe_space(space)), _constants(space)):
            console.print(Padding(part, (0, 0, 0, 2), expand=False))  # indented, and wrapped lines stay so
        console.print()
    console.print("Use one with `tune-adapter search --space NAME`, or pass a path to a space file "
                  "of your own (start from a copy of one of these):", highlight=False)
    console.print(str(SHIPPED_DIR), soft_wrap=True, highlight=False)  # whole, to copy from


def _description(space) -> str:
    """The module docstring's first line."""
    import sys

    doc = sys.modules[space.module_name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


def _constants(space):
    """BASELINE and the flag defaults, labels left, values wrapping in their column."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    if space.baseline:
        grid.add_row("baseline", _assignments(space.baseline))
    if space.defaults:
        grid.add_row("flags", _assignments({key.upper(): value for key, value in space.defaults.items()}))
    return grid


def _parameters_table(probed):
    from rich.table import Table

    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="dim")
    for column in ("parameter", "kind", "range or choices", "log"):
        table.add_column(column)
    for name, dist in sorted(probed.distributions.items()):
        kind, values, log = _describe(dist)
        table.add_row(name, kind, values, log)
    for name in sorted(set(probed.returned) - set(probed.distributions)):  # returned constants
        table.add_row(name, "fixed", ", ".join(_number(v) for v in sorted(probed.returned[name])), "")
    return table


def _describe(dist) -> tuple[str, str, str]:
    """(kind, range or choices, log) of an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "choice", ", ".join(_number(c) for c in dist.choices), ""
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    span = f"{_number(dist.low)} .. {_number(dist.high)}"
    if dist.step not in (None, 1):
        span += f" step {_number(dist.step)}"
    return kind, span, "log" if dist.log else ""


def _assignments(values: dict) -> str:
    return "  ".join(f"{key}={_number(value)}" for key, value in values.items())


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
