"""rich views of a search: a live table while it runs, the top trials when it ends."""

from __future__ import annotations

import math
from collections import Counter

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from ray.tune import Callback

from ..display import shown_path
from ..fit_table import Column, FitTable, format_number
from ..results import ExperimentInfo, baseline_verdict, start_line
from ..results_table import metric, param_columns, whole
from .scheduler import is_baseline

# PAUSED: screened, waiting at the finals rung for the others (scheduler.py).
STATE_NAMES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "waiting", "ERROR": "failed"}
LIVE_STATES = {"completed": "done", "stopped": "pruned", "error": "failed"}  # trials.parquet's status


def params_text(params: dict) -> str:
    return "  ".join(f"{k}={format_number(v)}" for k, v in params.items())


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

    def render(self, trials) -> Group:
        """The counts as a table; the best parameters on a line of their own, which may wrap."""
        counts = Counter(self.state_of(t) for t in trials) + self.before
        columns = [Column(state, [str(counts.get(state, 0))], short=state[:4], justify="right")
                   for state in ("running", "waiting", "pending", "done", "pruned", "failed")
                   if state != "waiting" or counts.get(state)]  # only while trials wait: 80 columns
        columns += [Column("baseline val_l1", [metric(self.baseline)], short="baseline", justify="right",
                           priority=1),
                    Column("best val_l1", [metric(self.best and self.best[0])], short="best", justify="right")]
        started = len(trials) + self.info.extra.get("run_starts", [0])[-1]
        caption = f"{started} of {self.info.num_samples} trials started, max {self.info.max_epochs} epochs"
        best = f"best parameters: {params_text(self.best[2])}" if self.best is not None else ""
        return Group(FitTable(columns, title=f"search {self.info.name}", caption=caption), Text(best))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.info.metric)
        if value is None or math.isnan(value):
            return
        if self.best is None or value < self.best[0]:
            self.best = (value, trial.trial_id, {p: trial.config.get(p) for p in self.info.params})
        if is_baseline(trial) and (self.baseline is None or value < self.baseline):
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
    ranked = trials_frame.sort_values("best_val_l1", na_position="last").reset_index(drop=True)
    shown = [(i + 1, row) for i, row in enumerate(ranked.to_dict("records")) if i < top or _is_baseline(row)]
    rows = [row for _, row in shown]
    columns = [
        Column("#", [str(rank) for rank, _ in shown]),
        Column("trial", [r["trial_id"] + (" (baseline)" if _is_baseline(r) else "") for r in rows]),
        Column("status", [r["status"] for r in rows]),
        *param_columns(trials_frame[varying], varying, rows),
        Column("best val_l1", [metric(r["best_val_l1"]) for r in rows], short="val_l1", justify="right"),
        Column("val_cos", [metric(r["best_val_cos"]) for r in rows], short="cos", justify="right", priority=900),
        Column("epoch", [whole(r["best_epoch"]) for r in rows], short="ep", justify="right"),
    ]
    paths = Text()
    for rank, row in shown:
        # pandas reads a missing string as NaN, which is truthy: only a str is a value here.
        where = next((v for v in (row["best_checkpoint"], row["error"]) if isinstance(v, str) and v),
                     "no checkpoint kept")
        paths.append(f"#{rank} {row['trial_id']}: {shown_path(where)}\n")
    lines = [baseline_verdict(ranked), start_line(ranked.iloc[0]) if len(ranked) else None]
    table = FitTable(columns, title=title, hidden_hint="tune-adapter results --wide shows them")
    return Group(table, paths, *(Text(line) for line in lines if line))


def _is_baseline(row: dict) -> bool:
    return bool(row.get("baseline", False))


