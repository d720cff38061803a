"""The report's figures. Each function returns a matplotlib Figure built without pyplot
(no global state, rendered by the Agg canvas); `png` turns one into bytes."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from .experiment import RANK_METRIC, Experiment
from .importance import Importances

WIDTH = 10.0  # inches; at DPI this about fills the report's column without scaling
DPI = 100
BEST_COLOR = "#d62728"
BASELINE_COLOR = "#000000"
STATUS_STYLE = {  # line style for curves, marker for scatter plots
    "completed": dict(color="#4c72b0", linestyle="-", marker="o", label="completed"),
    "pruned": dict(color="#8c8c8c", linestyle="--", marker="x", label="pruned by ASHA"),
    "stopped": dict(color="#bcbd22", linestyle="--", marker="v", label="stopped by --time-budget"),
    "error": dict(color="#8c564b", linestyle=":", marker="s", label="error"),
    "running": dict(color="#17becf", linestyle="-.", marker="^", label="running"),
}
# A metric spanning more than this factor is easier to read on a log axis.
LOG_SPAN = 5.0
LOG_TICKS = (1, 2, 3, 5)  # mantissas labelled on a log axis: plain numbers, not 10^k
MAX_INT_TICKS = 10


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def curves_figure(experiment: Experiment) -> Figure:
    """val_l1 by epoch, one line per trial; ASHA-stopped trials dashed grey with an x where
    they stopped; the best trial drawn last, thick and red."""
    figure = Figure(figsize=(WIDTH, 4.2))
    ax = figure.add_subplot()
    best_id = experiment.best()["trial_id"]
    values = []
    for row in experiment.trials.itertuples(index=False):
        curve = experiment.curve(row.trial_id)
        if curve.empty or row.trial_id == best_id:
            continue
        style = _style(row.status)
        ax.plot(curve["epoch"], curve["val_l1"], color=style["color"], linestyle=style["linestyle"],
                linewidth=1.2, alpha=0.75)
        if row.status in ("pruned", "stopped", "error"):  # where it stopped (an error may have one point)
            ax.plot(curve["epoch"].iloc[-1], curve["val_l1"].iloc[-1], linestyle="none",
                    marker=style["marker"], markersize=7, color=style["color"])
        values.extend(curve["val_l1"])
    best = experiment.curve(best_id)
    ax.plot(best["epoch"], best["val_l1"], color=BEST_COLOR, linewidth=2.6, marker="o",
            markersize=4, zorder=5)
    values.extend(best["val_l1"])
    baseline_ids = experiment.trials.loc[experiment.trials["baseline"], "trial_id"].tolist()
    for trial_id in baseline_ids:
        curve = experiment.curve(trial_id)
        ax.plot(curve["epoch"], curve["val_l1"], color=BASELINE_COLOR, linestyle=":", linewidth=2.2,
                zorder=4)
    _maybe_log_y(ax, values)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_l1")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    statuses = [s for s in STATUS_STYLE if s in set(experiment.trials["status"])]
    handles = [Line2D([], [], color=BEST_COLOR, linewidth=2.6, label=f"best: {best_id}")]
    handles += [Line2D([], [], color=BASELINE_COLOR, linestyle=":", linewidth=2.2, label=f"baseline: {t}")
                for t in baseline_ids]
    handles += [Line2D([], [], color=STATUS_STYLE[s]["color"], linestyle=STATUS_STYLE[s]["linestyle"],
                       marker=STATUS_STYLE[s]["marker"] if s in ("pruned", "stopped", "error") else None,
                       label=STATUS_STYLE[s]["label"])
                for s in statuses]
    _legend_outside(ax, handles=handles)
    ax.set_title("val_l1 of every trial by epoch")
    return figure


def best_so_far_figure(experiment: Experiment) -> Figure:
    """Each trial's best val_l1 in start order, and the best found up to each trial."""
    figure = Figure(figsize=(WIDTH, 3.4))
    ax = figure.add_subplot()
    scored = experiment.trials[experiment.trials[RANK_METRIC].notna()]
    for status, rows in scored.groupby("status", sort=False):
        style = _style(status)
        ax.scatter(rows["number"], rows[RANK_METRIC], color=style["color"], marker=style["marker"],
                   s=30, label=style["label"], zorder=3)
    running_best = np.fmin.accumulate(scored[RANK_METRIC].to_numpy(dtype=float))
    ax.step(scored["number"], running_best, where="post", color=BEST_COLOR, linewidth=2,
            label="best so far", zorder=4)
    _maybe_log_y(ax, scored[RANK_METRIC])
    ax.set_xlabel("trial number (start order)")
    ax.set_ylabel("best val_l1")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    ax.set_title("best val_l1 so far against trials run")
    return figure


def params_figure(experiment: Experiment) -> Figure:
    """One panel per parameter: its value against the trial's best val_l1."""
    names = experiment.params
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(WIDTH, 2.9 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    scored = experiment.trials[experiment.trials[RANK_METRIC].notna()]
    best_id = experiment.best()["trial_id"]
    distributions = experiment.distributions()
    for ax, name in zip(axes, names):
        _param_panel(ax, scored, name, distributions.get(name), best_id)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("best val_l1")
    _maybe_log_y(axes[0], scored[RANK_METRIC])
    figure.suptitle("each parameter against the trial's best val_l1 (red star: best trial)")
    return figure


def importance_figure(importances: Importances) -> Figure:
    names = list(importances.values)[::-1]  # largest on top
    values = [importances.values[n] for n in names]
    figure = Figure(figsize=(WIDTH * 0.5, 0.35 * len(names) + 1.0))  # half: two side by side
    ax = figure.add_subplot()
    bars = ax.barh(names, values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=9)
    ax.set_xlim(0, max(values) * 1.2 if max(values) > 0 else 1)
    ax.set_xlabel(f"importance ({importances.method}, sums to 1)")
    ax.set_title(f"{importances.method} parameter importance")
    return figure


def _param_panel(ax, scored, name: str, distribution: BaseDistribution | None, best_id: str):
    present = scored[scored[name].notna()]
    categories = _categories(present[name], distribution)
    position = (lambda v: categories.index(str(v))) if categories is not None else float
    for status, rows in present.groupby("status", sort=False):
        style = _style(status)
        ax.scatter([position(v) for v in rows[name]], rows[RANK_METRIC], color=style["color"],
                   marker=style["marker"], s=26, alpha=0.85, zorder=3)
    best = present[present["trial_id"] == best_id]
    if not best.empty:
        ax.scatter([position(v) for v in best[name]], best[RANK_METRIC], color=BEST_COLOR,
                   marker="*", s=160, zorder=4)
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    elif _is_log(name, distribution, present[name]):
        ax.set_xscale("log")
    elif isinstance(distribution, IntDistribution) and _steps(distribution) <= MAX_INT_TICKS:
        ax.set_xticks(range(distribution.low, distribution.high + 1, distribution.step))
    elif _is_integer(present[name]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(name)
    ax.grid(alpha=0.3)


def _categories(values, distribution) -> list[str] | None:
    """Category labels in the space's order, or None for a numeric parameter."""
    if isinstance(distribution, CategoricalDistribution):
        return [str(c) for c in distribution.choices]
    if distribution is None and not np.issubdtype(values.dtype, np.number):
        return sorted({str(v) for v in values})
    return None


def _is_log(name: str, distribution, values) -> bool:
    # lr is searched on a log scale even when the metadata lacks its distribution.
    logged = getattr(distribution, "log", False) or name == "lr"
    return bool(logged) and bool((values > 0).all())


def _is_integer(values) -> bool:
    return bool(np.issubdtype(values.dtype, np.integer)) or bool((values == values.round()).all())


def _steps(distribution: IntDistribution) -> int:
    return (distribution.high - distribution.low) // distribution.step + 1


def _maybe_log_y(ax, values) -> None:
    finite = np.asarray([v for v in values if v > 0 and math.isfinite(v)], dtype=float)
    if not finite.size or finite.max() / finite.min() <= LOG_SPAN:
        return
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis, finite.min(), finite.max())


def plain_log_ticks(axis, low: float, high: float) -> None:
    """Ticks at 1, 2, 3, 5 times powers of ten between low and high, as plain numbers."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0 ** k for k in decades for m in LOG_TICKS]
    axis.set_major_locator(FixedLocator([t for t in ticks if low / 1.2 <= t <= high * 1.2]))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend_outside(ax, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, **kwargs)


def _style(status: str) -> dict:
    return STATUS_STYLE.get(status, STATUS_STYLE["completed"])


def confirm_figure(runs) -> Figure:
    """Each confirmed configuration's runs as dots (one per seed) with mean +- sd, best mean
    val_l1 first; val_l1 and, when scored, test_l1 side by side."""
    from ..records.confirmation import finished_runs, summarize

    summary, done = summarize(runs), finished_runs(runs)
    metrics = [("best_val_l1", "val_l1 (best epoch)")]
    if done["test_l1"].notna().any():
        metrics.append(("test_l1", "test_l1 (at that epoch)"))
    figure = Figure(figsize=(WIDTH, 0.5 * len(summary) + 1.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    labels = [t + (" (baseline)" if b else "") for t, b in zip(summary["trial_id"], summary["baseline"])]
    for ax, (column, title) in zip(axes, metrics):
        for y, trial_id in enumerate(summary["trial_id"]):
            values = done[done["trial_id"] == trial_id][column].dropna().to_numpy(dtype=float)
            color = BEST_COLOR if y == 0 else STATUS_STYLE["completed"]["color"]
            ax.scatter(values, np.full(len(values), y), color=color, alpha=0.7, zorder=3)
            if len(values):
                sd = values.std(ddof=1) if len(values) > 1 else 0.0
                ax.errorbar(values.mean(), y + 0.25, xerr=sd, fmt="|", color="#333333", capsize=4,
                            markersize=12)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    return figure
