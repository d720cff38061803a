"""The live table of a running search: its trials by state and the best so far."""

from __future__ import annotations

import math
from collections import Counter

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text
from ray.tune import Callback

from ..records.fit_table import Column, FitTable, format_number
from ..records.results import ExperimentInfo
from ..records.results_table import metric
from .record import StoreCallback
from .scheduler import is_baseline, record_id

# The live table's names of trials.parquet's statuses (and of Tune's, for trials not yet
# recorded): its counts are the store's, so they agree with the files at every moment.
LIVE_STATES = {"completed": "done", "error": "failed", "PENDING": "pending", "RUNNING": "running",
               "ERROR": "failed"}
SHOWN_STATES = ("running", "waiting", "pending", "done", "pruned", "stopped", "failed")
SHOWN_IF_ANY = ("waiting", "stopped")  # columns only while they count: 80 columns


def params_text(params: dict) -> str:
    return "  ".join(f"{k}={format_number(v)}" for k, v in params.items())


class LiveTable(Callback):
    """Counts by state and the best `val_l1` so far, redrawn as results arrive."""

    def __init__(self, info: ExperimentInfo, recorder: StoreCallback, console: Console | None = None):
        self.info, self.recorder = info, recorder
        self.console = console
        self.live: Live | None = None
        self.best: tuple[float, str, dict] | None = None
        self.baseline: float | None = None  # the baseline trial's best val_l1 so far

    def __getstate__(self):
        return {**self.__dict__, "console": None, "live": None, "best": None, "baseline": None}

    def setup(self, **info):
        self.live = Live(self.render([]), console=self.console or Console(), refresh_per_second=4,
                         transient=False)
        self.live.start()

    def counts(self, trials) -> Counter:
        """The store's trials by status, and Tune's trials that have no record yet."""
        store = self.recorder.store
        recorded = store.trials if store is not None else {}
        counts = live_counts(r.status for r in recorded.values())
        counts.update(LIVE_STATES[t.status] for t in trials
                      if record_id(t) not in recorded and t.status in LIVE_STATES)
        return counts

    def render(self, trials) -> Group:
        """The counts as a table; the best parameters on a line of their own, which may wrap."""
        counts = self.counts(trials)
        columns = [Column(state, [str(counts.get(state, 0))], short=state[:4], justify="right")
                   for state in SHOWN_STATES if state not in SHOWN_IF_ANY or counts.get(state)]
        columns += [Column("baseline val_l1", [metric(self.baseline)], short="baseline", justify="right",
                           priority=1),
                    Column("best val_l1", [metric(self.best and self.best[0])], short="best", justify="right")]
        started = sum(counts.values()) - counts.get("pending", 0)
        caption = f"{started} of {self.info.num_samples} trials started, max {self.info.max_epochs} epochs"
        best = f"best parameters: {params_text(self.best[2])}" if self.best is not None else ""
        return Group(FitTable(columns, title=f"search {self.info.name}", caption=caption), Text(best))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.info.metric)
        if value is None or math.isnan(value):
            return
        if self.best is None or value < self.best[0]:
            self.best = (value, record_id(trial), {p: trial.config.get(p) for p in self.info.params})
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
