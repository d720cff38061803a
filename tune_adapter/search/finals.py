"""The finalists: the best screened trials by their value at the finals rung.

Every trial that reaches the finals rung ends there (scheduler.py). Once all have, the
best `finalists` of them continue to max epochs, each as a new Tune trial; a finalist
that fails hands its place to the next best. The ranking depends only on the values at
the rung, so a search killed and resumed at any moment chooses the same finalists.
"""

from __future__ import annotations

import math


class Finals:
    def __init__(self, rung: int | None, finalists: int):
        self.rung, self.finalists = rung, finalists
        self.values: dict[str, float] = {}  # screened trial -> its value at the rung
        self.configs: dict[str, dict] = {}  # screened trial -> its config
        self.of: dict[str, str] = {}  # finalist's Tune trial -> the screened trial it continues
        self.completed: set[str] = set()  # screened trials whose finalist trained to the end
        self.failed: set[str] = set()  # screened trials whose finalist failed

    def screened(self, trial_id: str, value: float, config: dict) -> None:
        self.values[trial_id], self.configs[trial_id] = value, config

    def ranked(self) -> list[str]:
        """Best first; a diverged trial (NaN) ranks last; ties by trial id."""
        return sorted(self.values, key=lambda t: (math.inf if math.isnan(self.values[t]) else self.values[t], t))

    def running(self) -> set[str]:
        return set(self.of.values()) - self.completed - self.failed

    def next(self) -> str | None:
        """The screened trial to continue next, or None when enough have or none is left."""
        if self.rung is None or len(self.completed) + len(self.running()) >= self.finalists:
            return None
        return next(iter(self.left()), None)

    def left(self) -> list[str]:
        """Screened trials no finalist continued yet, best first."""
        started = set(self.of.values())
        return [t for t in self.ranked() if t not in started]

    def start(self, finalist_id: str, screened_id: str) -> None:
        self.of[finalist_id] = screened_id

    def end(self, finalist_id: str, completed: bool) -> None:
        (self.completed if completed else self.failed).add(self.of[finalist_id])
