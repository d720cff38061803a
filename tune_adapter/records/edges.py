"""Edges: a winner whose parameter sits at the edge of its range suggests the best value
may lie beyond it. `best` and the report say so, with the command that widens the search.

The rule: a float in the outer 5% of its range, measured on its scale (log for a log
range); an int at either end; a numeric categorical at its smallest or largest choice.
A range of one value (a fixed parameter) never warns; neither do unordered choices
(strings, booleans), which have no edge to widen past."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution, json_to_distribution

from .results import ExperimentInfo

EDGE_FRACTION = 0.05  # of a float range, on its scale, at each end
EXTRA_TRIALS = 16  # how many more trials the suggested --continue runs


def edge_side(value, distribution: BaseDistribution) -> str | None:
    """"top", "bottom", "above", "below" (outside the range: a baseline's value), or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        return None
    if isinstance(distribution, CategoricalDistribution):
        return _choice_side(value, distribution.choices)
    low, high = distribution.low, distribution.high
    if low >= high:
        return None
    if value < low or value > high:
        return "below" if value < low else "above"
    if isinstance(distribution, IntDistribution):
        return "bottom" if value == low else "top" if value == high else None
    position = _position(value, low, high, distribution.log)
    return "bottom" if position <= EDGE_FRACTION else "top" if position >= 1 - EDGE_FRACTION else None


def _position(value: float, low: float, high: float, log: bool) -> float:
    """Where `value` lies in [low, high], from 0 to 1, on the range's scale."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def _choice_side(value, choices) -> str | None:
    numeric = [c for c in choices if isinstance(c, numbers.Real) and not isinstance(c, bool)]
    if len(numeric) < 2 or len(numeric) < len(choices):
        return None
    return "bottom" if value == min(numeric) else "top" if value == max(numeric) else None


def range_text(distribution: BaseDistribution) -> str:
    """The range as a space file gives it: 1e-05..0.01 (log), 3..9 (step 2), 2|4|8."""
    if isinstance(distribution, CategoricalDistribution):
        return "|".join(str(c) for c in distribution.choices)
    text = f"{_g(distribution.low)}..{_g(distribution.high)}"
    if distribution.log:
        return text + " (log)"
    step = distribution.step
    return text + (f" (step {_g(step)})" if step not in (None, 1) else "")


def _g(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def search_winner(trials) -> Mapping | None:
    """The trial with the lowest best val_l1 (the earlier on a tie), as the tables rank it."""
    scored = trials[trials["best_val_l1"].notna()]
    if scored.empty:
        return None
    return scored.sort_values(["best_val_l1", "number"], kind="stable").iloc[0].to_dict()


def edge_warnings(winner: Mapping | None, info: ExperimentInfo, trials: int) -> list[str]:
    """One line per parameter of the winner at an edge of its range, each naming the same
    command that continues the search (`trials`: how many it has)."""
    edges = []
    for param in info.params if winner is not None else ():
        if param not in info.distributions or param not in winner:
            continue  # a search from before distributions were recorded
        distribution = json_to_distribution(info.distributions[param])
        side = edge_side(_plain(winner[param]), distribution)
        if side is not None:
            edges.append((param, side, distribution))
    follow_up = f"{widen_advice(info.space)} {next_search(info, trials, [d for _, _, d in edges])}"
    lines = []
    for param, side, distribution in edges:
        where = f"lies {side} its range" if side in ("above", "below") else f"lies at the {side} of its range"
        lines.append(f"{param} {_value_text(winner[param])} {where} {range_text(distribution)}: {follow_up}")
    return lines


def next_search(info: ExperimentInfo, trials: int, distributions: list[BaseDistribution]) -> str:
    """More trials in the same study (`--continue`), unless new categorical choices are
    wanted: an Optuna study keeps a categorical's choices, so a new search warm-starts."""
    if any(isinstance(d, CategoricalDistribution) for d in distributions):
        return f"--name {info.name}-2 --warm-start results/{info.name}"
    return f"--name {info.name} --continue --num-samples {trials + EXTRA_TRIALS}"


def widen_advice(space: str) -> str:
    """A shipped space is not the user's to edit: widen a copy of it instead."""
    from ..space import SHIPPED_DIR, recorded_space, shipped_spaces
    from ..views.display import shown_path

    name = recorded_space(space) if space else ""
    if name in shipped_spaces() or (space and Path(space).resolve().parent == SHIPPED_DIR):
        source = shown_path(SHIPPED_DIR / f"{Path(name).stem}.py")
        return (f"widen it in a copy of the space (cp {source} my_space.py) and add trials with "
                f"tune-adapter search --space my_space.py")
    return f"widen it in the space file and add trials with tune-adapter search --space {space or 'SPACE'}"


def _plain(value):
    """A numpy scalar from a DataFrame as its Python number."""
    return value.item() if hasattr(value, "item") else value


def _value_text(value) -> str:
    return _g(_plain(value))
