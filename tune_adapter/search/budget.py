"""`--time-budget`: the search's clock, carried across `--resume` and `--continue`.

Once the budget is spent the searcher hands out no more trials, and the scheduler ends
each running trial at its next epoch boundary (a result: its checkpoint is saved), which
the store records as `stopped`. The time spent is saved with the experiment at every
write of its Parquet files, so a killed search's downtime does not count.

One clock serves the searcher, the scheduler and the store: Tune pickles all three in one
piece with the experiment (tuner.pkl), so after a restore they share it again; the store
restarts it from the time its Parquet files recorded (record.py). Not a Tune Stopper:
Tune saves its stopper apart, in every experiment snapshot, so a restored one would count
on a clock of its own.
"""

from __future__ import annotations

import os
import time

SPENT_KEY = "search_seconds"  # ExperimentInfo.extra: seconds the search has run, all runs
# Test-only: each recorded result advances the clock by this many seconds, and the wall
# clock does not count, so a test stops a search at a chosen result, not a chosen moment.
FAKE_SECONDS_ENV = "TUNE_ADAPTER_SECONDS_PER_RESULT"


class SearchClock:
    def __init__(self, budget_s: float | None = None, spent_before: float = 0.0):
        self.budget_s = budget_s
        self.stopped: set[str] = set()  # trials the budget ended (Tune ids)
        self.restart(spent_before)

    def restart(self, spent_before: float) -> None:
        """Count on from `spent_before` seconds (a new run, or the same one restored)."""
        self.spent_before, self.started = spent_before, time.monotonic()
        self.fake_step = float(os.environ.get(FAKE_SECONDS_ENV, 0) or 0)
        self.fake_spent = 0.0

    def __setstate__(self, state: dict) -> None:
        # Another process's monotonic clock means nothing here: count on from what was spent.
        self.__dict__.update(state)
        self.restart(self.spent_before)

    def spent(self) -> float:
        run = self.fake_spent if self.fake_step else time.monotonic() - self.started
        return self.spent_before + run

    def is_spent(self) -> bool:
        return self.budget_s is not None and self.spent() >= self.budget_s

    def note_result(self) -> None:
        self.fake_spent += self.fake_step
