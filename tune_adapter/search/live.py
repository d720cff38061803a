"""rich views of a search: a live table while it runs, the top trials when it ends."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from ray.tune import Callback

from ..results import ExperimentInfo, baseline_verdict, is_nan, start_line
from .optuna_pruned import BASELINE_KEY

STATE_NAMES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "ERROR": "failed"}
LIVE_STATES = {"completed": "done", "stopped": "pruned", "error": "failed"}  # trials.parquet's status


def format_param(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4g}"
    return str(value)


def params_text(params: dict) -> str:
    return "  ".join(f"{k}={format_param(v)}" for k, v in params.items())


class LiveTable(Callback):
    """Counts by state and the best `val_l1` so far, redrawn as results arrive."""

    def __init__(self, info: ExperimentInfo, console: Console | None = None, before: Counter | None = None):
        self.info = info
        self.console = console
        self.live: Live | None = None
        self.best: tuple[float, str, dict] | None = None
        self.baseline: float | None = None  # the baseline trial's best val_l1 so far
        self.before = before or Counter()  # ended trials of earlier runs (--continue), by state

    def __getstate__(self):
        return {"info": self.info, "console": None, "live": None, "best": None, "baseline": None,
                "before": self.before}

    def setup(self, **info):
        self.live = Live(self.render([]), console=self.console or Console(), refresh_per_second=4,
                         transient=False)
        self.live.start()

    def state_of(self, trial) -> str:
        if trial.status == "TERMINATED":
            epochs = (trial.last_result or {}).get("epoch", 0)
            return "done" if epochs >= self.info.max_epochs else "pruned"
        return STATE_NAMES.get(trial.status, trial.status.lower())

    def render(self, trials) -> Table:
        counts = Counter(self.state_of(t) for t in trials) + self.before
        table = Table(title=f"search {self.info.name}", title_justify="left")
        for column in ("running", "pending", "done", "pruned", "failed", "baseline val_l1", "best val_l1",
                       "best parameters"):
            table.add_column(column, justify="right" if column != "best parameters" else "left")
        best_value, best_params = ("-", "")
        if self.best is not None:
            best_value, best_params = f"{self.best[0]:.4f}", params_text(self.best[2])
        table.add_row(*(str(counts.get(s, 0)) for s in ("running", "pending", "done", "pruned", "failed")),
                      _metric(self.baseline), best_value, best_params)
        started = len(trials) + self.info.extra.get("run_starts", [0])[-1]
        table.caption = f"{started} of {self.info.num_samples} trials started, max {self.info.max_epochs} epochs"
        return table

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.info.metric)
        if value is None or math.isnan(value):
            return
        if self.best is None or value < self.best[0]:
            self.best = (value, trial.trial_id, {p: trial.config.get(p) for p in self.info.params})
        if trial.config.get(BASELINE_KEY) and (self.baseline is None or value < self.baseline):
            self.baseline = value

    def on_step_end(self, iteration, trials, **info):
        if self.live is not None:
            self.live.update(self.render(trials))

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.update(self.render(trials))
            self.live.stop()
            self.live.console.line()
            self.live = None


def live_counts(statuses) -> Counter:
    """The live table's counts of trials.parquet statuses."""
    return Counter(LIVE_STATES.get(s, s) for s in statuses)


def top_trials_table(trials_frame, params: list[str], top: int, title: str) -> Group:
    """The best trials by `best_val_l1` (and the baseline, marked, wherever it ranks), their
    checkpoint folders (long paths wrap), and how the winner compares with the baseline."""
    varying = [p for p in params if trials_frame[p].nunique(dropna=False) > 1] or params
    table = Table(title=title, title_justify="left")
    table.add_column("#")
    table.add_column("trial", no_wrap=True, min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    for column in (*varying, "best val_l1", "val_cos", "epoch"):
        table.add_column(column)
    ranked = trials_frame.sort_values("best_val_l1", na_position="last").reset_index(drop=True)
    shown = [(i + 1, row) for i, row in enumerate(ranked.to_dict("records")) if i < top or _is_baseline(row)]
    paths = Text()
    for rank, row in shown:
        epoch = row["best_epoch"]
        table.add_row(
            str(rank), row["trial_id"] + (" (baseline)" if _is_baseline(row) else ""), row["status"],
            *(format_param(row[p]) for p in varying), _metric(row["best_val_l1"]),
            _metric(row["best_val_cos"]), "-" if epoch is None or is_nan(epoch) else str(int(epoch)),
        )
        # pandas reads a missing string as NaN, which is truthy: only a str is a value here.
        where = next((v for v in (row["best_checkpoint"], row["error"]) if isinstance(v, str) and v),
                     "no checkpoint kept")
        paths.append(f"#{rank} {row['trial_id']}: {short_path(where)}\n")
    lines = [baseline_verdict(ranked), start_line(ranked.iloc[0]) if len(ranked) else None]
    return Group(table, paths, *(Text(line) for line in lines if line))


def _is_baseline(row: dict) -> bool:
    return bool(row.get("baseline", False))


def short_path(path: str) -> str:
    """Relative to the working folder when below it: what a user would type."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _metric(value) -> str:
    return "-" if value is None or is_nan(value) else f"{value:.4f}"

