"""OptunaSearch that tells the study every epoch, pruned trials' last included.

Ray Tune calls a searcher's `on_trial_result` only when the scheduler lets the trial go on:
the result on which ASHA stops a trial reaches `on_trial_complete` alone, and stock
OptunaSearch then tells it as a finished trial with a half-trained value. Here every epoch's
`val_l1` becomes an intermediate value of the study (at step = epoch), the stopping one
included, and a stopped trial is told PRUNED only after it: TPE ranks pruned trials by
their last (step, value), so a pruned trial without values teaches it nothing.
A trial that ran all epochs is told COMPLETE with its best epoch's value, the value the
search ranks and exports it by. The study lives in the experiment's journal (study.py).
"""

from __future__ import annotations

import math

from optuna.trial import Trial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from . import scheduler
from .budget import budget_spent
from .scheduler import BASELINE_KEY
from .study import TUNE_ID_ATTR


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, baseline: dict | None = None, **kwargs):
        super().__init__(*args, points_to_evaluate=[dict(baseline)] if baseline else None, **kwargs)
        self.max_epochs = max_epochs
        self.max_concurrent = 0  # 0: no limit
        # The enqueued baseline is what the study's first ask() returns.
        self.baseline_pending = bool(baseline)

    def suggest(self, trial_id: str):
        if budget_spent():
            return Searcher.FINISHED
        if trial_id not in self._ot_trials and self.at_capacity():
            return None
        if trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = self.adopt_orphan() or self._ot_study.ask()
            self.label(trial_id)
        config = super().suggest(trial_id)
        if config is not None and self._ot_trials[trial_id].user_attrs.get(BASELINE_KEY):
            config[BASELINE_KEY] = True
        return config

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # Tune's ConcurrencyLimiter then leaves the limit to `at_capacity`

    def at_capacity(self) -> bool:
        running = set(self._ot_trials) - self._completed_trials - scheduler.WAITING
        return bool(self.max_concurrent) and len(running) >= self.max_concurrent

    def label(self, trial_id: str) -> None:
        """Name the Tune trial in the study, and the baseline (the first trial asked)."""
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        if self.baseline_pending:
            self.baseline_pending = False
            trial.set_user_attr(BASELINE_KEY, True)

    def adopt_orphan(self):
        """A study trial asked after Tune's last snapshot, before the driver died: Tune,
        resumed from the snapshot, never knew it and asks for a new trial in its place, which
        runs that trial's configuration instead of adding a second one to the study."""
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known and TUNE_ID_ATTR in trial.user_attrs:
                self.baseline_pending = self.baseline_pending and not trial.user_attrs.get(BASELINE_KEY)
                return Trial(self._ot_study, trial._trial_id)
        return None

    def study_trial(self, trial_id: str):
        """The Optuna study's record (FrozenTrial) of a Tune trial."""
        return self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)

    def is_told(self, trial_id: str) -> bool:
        """Ended in the study: by this searcher, or by one that ran before a crash."""
        return trial_id in self._completed_trials or self.study_trial(trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict):
        if not self.is_told(trial_id):
            self.tell_epoch(trial_id, result)

    def tell_epoch(self, trial_id: str, result: dict | None) -> None:
        """Report the result's value at step = its epoch (again, after a resume: the value
        the trial now reports is the one the Parquet store keeps)."""
        if not result or self.metric not in result or "epoch" not in result:
            return
        epoch, value = int(result["epoch"]), float(result[self.metric])
        if not math.isnan(value):
            self._ot_study._storage.set_trial_intermediate_value(self._ot_trials[trial_id]._trial_id, epoch, value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self.is_told(trial_id):
            self._completed_trials.add(trial_id)
            return
        self.tell_epoch(trial_id, result)
        told = self.study_trial(trial_id).intermediate_values
        if error or not told:
            state, value = (TrialState.FAIL if error else TrialState.PRUNED), None
        elif max(told) < self.max_epochs:
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.COMPLETE, min(told.values())
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)

