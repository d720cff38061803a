"""ASHA that never stops the baseline and picks its finalists once every trial is screened.

Ray's ASHA is asynchronous: a trial reaching a rung is compared only with the trials that
reached it before, so the first arrivals go on, and at the top rung each early arrival
trains to the end. Here a trial that passes the finals rung (the last of ASHA's rungs
whose next one, rung x reduction factor, is within max epochs) waits there, PAUSED with
its checkpoint, until every trial of the run has been screened. Then the best `finalists`
of the waiting trials train to max epochs and the others end as pruned. Below the finals
rung it is Ray's ASHA. docs/performance.md has the measurements behind it.
"""

from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from . import budget

BASELINE_KEY = "baseline"  # set (True) in the config of the search's baseline trial


def is_baseline(trial) -> bool:
    return bool(trial.config.get(BASELINE_KEY))


def finals_rung(grace_period: int, reduction_factor: int, max_epochs: int) -> int | None:
    """The rung the finalists are chosen at, or None when ASHA has no rung below the end."""
    rung, finals = grace_period, None
    while rung < max_epochs and rung * reduction_factor <= max_epochs:
        finals, rung = rung, rung * reduction_factor
    return finals


# Trials waiting at the finals rung, for the searcher's limit on trials at once
# (optuna_pruned.py): Tune pickles scheduler and searcher apart, both in the driver.
WAITING: set[str] = set()


class SearchScheduler(ASHAScheduler):
    def __init__(self, *, trials: int, finals: int | None, finalists: int, **asha):
        super().__init__(**asha)
        self.trials = trials  # this run's Tune trials: screening ends when all have reached it
        self.finals = finals  # the rung (finals_rung), None: Ray's ASHA alone
        self.finalists = finalists
        self.chosen: set[str] | None = None  # the finalists, once chosen
        WAITING.clear()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get(self._time_attr, 0)
        if is_baseline(trial):
            # The baseline is what the search is measured against, so it trains all epochs.
            # Its values stay in the rungs: the first trials to reach a rung need a
            # reference, else ASHA promotes them whatever their value.
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and epoch < self._max_t:
                self._num_stopped -= 1
                return TrialScheduler.CONTINUE
            return action
        if self.finals is None or epoch < self.finals:
            return super().on_trial_result(tune_controller, trial, result)
        if self.chosen is not None:
            return TrialScheduler.STOP if epoch >= self._max_t or trial.trial_id not in self.chosen \
                else TrialScheduler.CONTINUE
        # Screened (past the rung only when a resume lost its result there): it waits.
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.CONTINUE:
            return action
        WAITING.add(trial.trial_id)
        return TrialScheduler.PAUSE

    def waits(self, trial) -> bool:
        """Screened, and waiting for the others (PAUSED; PENDING after a resume)."""
        return (self.finals is not None and not is_baseline(trial)
                and trial.status in (Trial.PAUSED, Trial.PENDING)
                and (trial.last_result or {}).get(self._time_attr, 0) >= self.finals
                and trial.trial_id not in (self.chosen or ()))

    def choose_trial_to_run(self, tune_controller):
        trials = tune_controller.get_trials()
        WAITING.clear()
        WAITING.update(t.trial_id for t in trials if self.waits(t))
        for trial in trials:
            if trial.status == Trial.PENDING and not self.waits(trial):
                return trial
        if self.chosen is None and self.all_screened(trials):
            self.choose(tune_controller, trials)
        for trial in trials:
            if trial.status in (Trial.PENDING, Trial.PAUSED) and trial.trial_id in (self.chosen or ()):
                return trial
        return None

    def rank_value(self, trial) -> float:
        """Its value at the rung, smaller is better; a diverged trial (NaN) ranks last."""
        value = (trial.last_result or {}).get(self._metric, math.nan)
        return math.inf if math.isnan(value) else value if self._mode == "min" else -value

    def all_screened(self, trials) -> bool:
        if self.finals is None or (len(trials) < self.trials and not budget.budget_spent()):
            return False
        return all(t.is_finished() or self.waits(t) or is_baseline(t) for t in trials)

    def choose(self, tune_controller, trials) -> None:
        waiting = sorted((t for t in trials if self.waits(t)), key=lambda t: (self.rank_value(t), t.trial_id))
        # Finalists that trained to the end before a resume keep their places. (A trial
        # resumed past the rung, its result there lost, may be stopped there by ASHA.)
        ended = {t.trial_id for t in trials if not is_baseline(t) and t.is_finished()
                 and (t.last_result or {}).get(self._time_attr, 0) >= self._max_t}
        slots = 0 if budget.budget_spent() else max(0, self.finalists - len(ended))
        self.chosen = ended | {t.trial_id for t in waiting[:slots]}
        for trial in waiting[slots:]:
            if budget.budget_spent():
                budget.ACTIVE.stopped.add(trial.trial_id)
            tune_controller.stop_trial(trial)
        WAITING.clear()
