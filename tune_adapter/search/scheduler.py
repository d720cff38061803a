"""When a trial stops: Ray's ASHA below the finals rung, every screened trial at it.

Ray's ASHA is asynchronous: a trial reaching a rung is compared only with the trials that
reached it before, so the first arrivals go on, and at the top rung each early arrival
trains to the end. Here ASHA runs up to the finals rung (the last of its rungs whose next
one, rung x reduction factor, is within max epochs), and every trial that reaches that
rung ends there, screened, with its checkpoint. The searcher (searcher.py) then chooses
the finalists among all of them by their value at the rung and runs each as a new Tune
trial that continues from that checkpoint (`FINALS_OF` in its config). Nothing waits
PAUSED, so a restored experiment has nothing to unpause: Tune resumes it as it was.
docs/performance.md has the measurements behind it.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from .budget import SearchClock

BASELINE_KEY = "baseline"  # set (True) in the config of the search's baseline trial
FINALS_OF = "finals_of"  # in a finalist's config: the screened trial it continues
CPUS_KEY = "cpus"  # in a finalist's config: its CPUs, when more than a screening trial's


def is_baseline(trial) -> bool:
    return bool(trial.config.get(BASELINE_KEY))


def is_finalist(trial) -> bool:
    return trial.config.get(FINALS_OF) is not None


def record_id(trial) -> str:
    """The trial's row in trials.parquet: a finalist's is the screened trial it continues."""
    return trial.config.get(FINALS_OF) or trial.trial_id


def finals_rung(grace_period: int, reduction_factor: int, max_epochs: int) -> int | None:
    """The rung the finalists are chosen at, or None when ASHA has no rung below the end."""
    rung, finals = grace_period, None
    while rung < max_epochs and rung * reduction_factor <= max_epochs:
        finals, rung = rung, rung * reduction_factor
    return finals


class SearchScheduler(FIFOScheduler):
    """FIFO order; stopping decisions from an ASHA whose last rung is the finals rung, and
    from the time budget (budget.py)."""

    def __init__(self, *, finals: int | None, max_epochs: int, metric: str, mode: str,
                 grace_period: int, reduction_factor: int, clock: SearchClock | None = None):
        super().__init__()
        self.finals, self.max_epochs = finals, max_epochs
        self.clock = clock or SearchClock()
        self.asha = ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=finals or max_epochs,
                                  grace_period=grace_period, reduction_factor=reduction_factor)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self.asha.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_finalist(trial):
            self.asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self.clock.note_result()  # before the callbacks see the result
        if self.clock.is_spent():
            # --time-budget: every trial ends at its next result, with its checkpoint.
            self.clock.stopped.add(trial.trial_id)
            return TrialScheduler.STOP
        if is_finalist(trial):
            return TrialScheduler.CONTINUE  # chosen: it trains to max epochs
        action = self.asha.on_trial_result(tune_controller, trial, result)
        if is_baseline(trial):
            # The baseline is what the search is measured against, so it trains all epochs.
            # Its values stay in ASHA's rungs: the first trials to reach a rung need a
            # reference, else ASHA promotes them whatever their value.
            return TrialScheduler.CONTINUE
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not is_finalist(trial):
            self.asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        if not is_finalist(trial):
            self.asha.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if not is_finalist(trial):
            self.asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return self.asha.debug_string()
