"""`--time-budget`: the search's clock, carried across `--resume` and `--continue`.

Once the budget is spent the searcher hands out no more trials, and Tune's stopper ends
each running trial at its next epoch boundary (a result: its checkpoint is saved), which
the store records as `stopped`. The time spent is saved with the experiment at every
write of its Parquet files, so a killed search's downtime does not count.

Tune pickles its searcher, stopper and callbacks into snapshots, so they find the running
search's clock here (one search per driver process) rather than holding it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from ray.tune import Stopper

SPENT_KEY = "search_seconds"  # ExperimentInfo.extra: seconds the search has run, all runs
# Test-only: each recorded result advances the clock by this many seconds, and the wall
# clock does not count, so a test stops a search at a chosen result, not a chosen moment.
FAKE_SECONDS_ENV = "TUNE_ADAPTER_SECONDS_PER_RESULT"


class SearchClock:
    def __init__(self, budget_s: float | None, spent_before: float = 0.0):
        self.budget_s, self.spent_before = budget_s, spent_before
        self.started = time.monotonic()
        self.fake_step = float(os.environ.get(FAKE_SECONDS_ENV, 0) or 0)
        self.fake_spent = 0.0
        self.stopped: set[str] = set()  # trials the budget ended

    def spent(self) -> float:
        run = self.fake_spent if self.fake_step else time.monotonic() - self.started
        return self.spent_before + run

    def is_spent(self) -> bool:
        return self.budget_s is not None and self.spent() >= self.budget_s

    def note_result(self) -> None:
        self.fake_spent += self.fake_step


ACTIVE: SearchClock | None = None


@contextmanager
def running_clock(budget_s: float | None, spent_before: float):
    global ACTIVE
    ACTIVE = SearchClock(budget_s, spent_before)
    try:
        yield ACTIVE
    finally:
        ACTIVE = None


def budget_spent() -> bool:
    return ACTIVE is not None and ACTIVE.is_spent()


def stopped_by_budget(trial_id: str) -> bool:
    return ACTIVE is not None and trial_id in ACTIVE.stopped


class BudgetStopper(Stopper):
    """Ends a trial at the first result after the budget is spent; never all at once, so
    each trial finishes the epoch it is in and keeps its checkpoint."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        if ACTIVE is not None:
            ACTIVE.note_result()  # Tune asks before its callbacks see the result
        if budget_spent():
            ACTIVE.stopped.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False
