"""OptunaSearch that tells the study which trials ASHA stopped.

Ray hands a trial that ASHA stopped to the searcher as finished, with its last, partly
trained `val_l1`; Optuna's TPE would then learn from unfinished losses as if they were
final. Trials that did not reach max epochs are told as PRUNED instead (Optuna keeps their
intermediate values, reported every epoch).
"""

from __future__ import annotations

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def stopped_early(self, result: dict | None, error: bool) -> bool:
        return not error and bool(result) and result.get("epoch", self.max_epochs) < self.max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not self.stopped_early(result, error) or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
