"""The parallel-coordinates figure: one line per trial through its value of each parameter
to its best val_l1, coloured by that val_l1. Lines are drawn on one hidden axes scaled 0-1;
each parameter gets a twin axes at its x position, scaled as the parameter (log, choices),
whose ticks are the labels: a value's height on it is its height on the hidden axes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from optuna.distributions import IntDistribution

from ..records.study_trials import is_missing
from .experiment import RANK_METRIC, Experiment
from .plots import LOG_SPAN, MAX_INT_TICKS, WIDTH, _categories, _is_log, _steps, plain_log_ticks

CMAP = "viridis_r"  # the best (lowest) val_l1 brightest


@dataclass
class Axis:
    """One vertical axis: its label and how a value maps to a height in 0-1."""

    name: str
    low: float
    high: float
    log: bool = False
    choices: list[str] | None = None  # a categorical axis: positions 0..n-1
    ticks: list[float] | None = None  # fixed tick values, else matplotlib's

    def height(self, value) -> float:
        if is_missing(value):
            return math.nan  # a parameter the trial did not sample: a gap in its line
        if self.choices is not None:
            value = self.choices.index(str(value))
        value = float(value)
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


def parallel_figure(experiment: Experiment) -> Figure:
    """Every trial with a val_l1, worst drawn first so the best lie on top."""
    scored = experiment.ranked().iloc[::-1]
    axes = [param_axis(name, experiment.distributions().get(name), scored[name].dropna())
            for name in experiment.params] + [metric_axis(scored[RANK_METRIC])]
    figure = Figure(figsize=(WIDTH, 4.6), layout="constrained")
    host = figure.add_subplot()
    norm = _norm(scored[RANK_METRIC])
    colorbar = figure.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=host, pad=0.06,
                               label="best val_l1")
    if isinstance(norm, LogNorm):
        plain_log_ticks(colorbar.ax.yaxis, norm.vmin, norm.vmax)
    cmap = colorbar.cmap
    best_id = experiment.best()["trial_id"]
    for row in scored.to_dict("records"):  # records: a param name need not be an identifier
        heights = [axis.height(row[axis.name]) for axis in axes]
        best = row["trial_id"] == best_id
        host.plot(range(len(axes)), heights, color=cmap(norm(row[RANK_METRIC])),
                  linewidth=2.8 if best else 1.2, alpha=1.0 if best else 0.75,
                  linestyle="-" if row["status"] in ("completed", "running") or best else "--",
                  zorder=3 if best else 2, gid=row["trial_id"])
    _frame(host, axes)
    for x, axis in enumerate(axes):
        _twin(host, axis, x)
    host.set_title("each trial across the parameters, coloured by best val_l1 "
                   "(dashed: pruned or failed; thick: the best trial)")
    return figure


def param_axis(name: str, distribution, values) -> Axis:
    """The parameter's axis over its whole search range (the distribution's), so where the
    trials sit within the range shows; the data's range when there is no distribution."""
    categories = _categories(values, distribution)
    if categories is not None:
        return Axis(name, -0.5, len(categories) - 0.5, choices=categories,
                    ticks=list(range(len(categories))))
    low = min([float(values.min())] + _bound(distribution, "low")) if len(values) else 0.0
    high = max([float(values.max())] + _bound(distribution, "high")) if len(values) else 1.0
    log = _is_log(name, distribution, values) and low > 0
    low, high = _widen(low, high, log)
    ticks = None
    if isinstance(distribution, IntDistribution) and _steps(distribution) <= MAX_INT_TICKS:
        ticks = list(range(distribution.low, distribution.high + 1, distribution.step))
    return Axis(name, low, high, log=log, ticks=ticks)


def metric_axis(values) -> Axis:
    values = values.to_numpy(dtype=float)
    log = bool(values.min() > 0 and values.max() / values.min() > LOG_SPAN)
    low, high = _widen(float(values.min()), float(values.max()), log)
    return Axis(RANK_METRIC, low, high, log=log)


def _bound(distribution, side: str) -> list[float]:
    value = getattr(distribution, side, None)
    return [] if value is None else [float(value)]


def _widen(low: float, high: float, log: bool) -> tuple[float, float]:
    """A little room either side, and some range when every trial has the same value."""
    if log:
        pad = max((math.log(high) - math.log(low)) * 0.04, 0.05)
        return math.exp(math.log(low) - pad), math.exp(math.log(high) + pad)
    pad = (high - low) * 0.04 or max(abs(low) * 0.1, 0.5)
    return low - pad, high + pad


def _norm(values):
    values = values.to_numpy(dtype=float)
    if values.min() > 0 and values.max() / values.min() > LOG_SPAN:
        return LogNorm(values.min(), values.max())
    return Normalize(values.min(), values.max() if values.max() > values.min() else values.min() + 1e-12)


def _frame(host, axes: list[Axis]) -> None:
    host.set_xlim(-0.15, len(axes) - 0.85)
    host.set_ylim(0, 1)
    host.set_xticks(range(len(axes)), [a.name for a in axes])
    host.set_yticks([])
    for spine in host.spines.values():
        spine.set_visible(False)


def _twin(host, axis: Axis, x: int) -> None:
    """The axis's ticks, on a twin whose y range is the axis's, its spine at x."""
    twin = host.twinx()
    if axis.log:
        twin.set_yscale("log")
    twin.set_ylim(axis.low, axis.high)
    for side in ("top", "bottom", "left"):
        twin.spines[side].set_visible(False)
    twin.spines["right"].set_position(("data", x))
    twin.tick_params(axis="y", labelsize=8)
    if axis.choices is not None:
        twin.yaxis.set_major_locator(FixedLocator(axis.ticks))
        twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _, c=axis.choices: _choice(c, v)))
    elif axis.ticks is not None:
        twin.yaxis.set_major_locator(FixedLocator(axis.ticks))
    elif not axis.log:
        twin.yaxis.set_major_locator(MaxNLocator(6))
    if axis.log and axis.name == RANK_METRIC:  # its narrow range gets 1-2-3-5 ticks
        plain_log_ticks(twin.yaxis, axis.low, axis.high)
    elif axis.log:  # a parameter's, over decades: a tick a decade
        twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _choice(choices: list[str], position: float) -> str:
    index = int(round(position))
    return choices[index] if 0 <= index < len(choices) else ""

