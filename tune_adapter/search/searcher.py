"""The searcher: Optuna's study, through its ask-and-tell interface, hands Tune its trials.

Screening: each trial is asked of the study (the space's `space(trial)` gives its config)
and is told every epoch's `val_l1` as an intermediate value (step = epoch), the one ASHA
stops it on included. A trial stopped below the finals rung is told PRUNED (TPE ranks
pruned trials by their last step and value, so it still teaches the sampler); one that
ran all epochs is told COMPLETE with its best epoch's value, the value the search ranks
and exports it by. A trial that reached the finals rung stays RUNNING in the study.

Finals (finals.py): once every screened trial has ended, the best `finalists` by their
value at the rung continue, each as a new Tune trial. The study lives in the
experiment's journal (study.py).

Tune saves this searcher's progress with every experiment snapshot (`save`) and restores
it with the trials of the same snapshot (`restore`); the study itself is on disk.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher

from .budget import SearchClock
from .finals import Finals
from .scheduler import BASELINE_KEY, CPUS_KEY, FINALS_OF
from .study import TUNE_ID_ATTR, WARM_START_ATTR, journal_storage, set_intermediate, storage_trial_id

# What describes the search rather than its progress: a restore keeps these as built.
SETTINGS = ("folder", "study_name", "space_fn", "trials", "max_epochs", "clock", "max_concurrent",
            "finalist_cpus")
# A finalist gets the CPUs screening leaves free only when its training left is at least this
# long: more CPUs means a new Ray actor (a process that imports torch and opens the data, about
# 5 s on 2 cores), where the same CPUs would reuse a screening trial's (docs/performance.md).
LONG_FINALS_S = 60.0


class StudySearcher(Searcher):
    def __init__(self, *, folder: Path, study_name: str, space_fn, sampler, trials: int, max_epochs: int,
                 finals: Finals, clock: SearchClock, finalist_cpus: float | None = None,
                 metric: str = "val_l1", mode: str = "min"):
        super().__init__(metric=metric, mode=mode)
        self.finalist_cpus = finalist_cpus  # a lone finalist's CPUs (driver.finalist_cpus)
        self.epoch_seconds: dict[str, float] = {}  # each trial's last epoch, in seconds
        self.folder, self.study_name, self.space_fn = str(folder), study_name, space_fn
        self.sampler, self.trials, self.max_epochs = sampler, trials, max_epochs
        self.finals, self.clock = finals, clock
        self.numbers: dict[str, int] = {}  # Tune trial -> study trial number (a finalist: its screened trial's)
        self.running: set[str] = set()  # Tune trials handed out and not ended
        self.configs: dict[str, dict] = {}  # screening trial -> its config
        self.baseline: str | None = None  # the baseline's Tune trial
        self.max_concurrent = 0  # 0: no limit
        self._storage = self._study = None

    # --- Tune's snapshots --------------------------------------------------------------
    def __getstate__(self):
        return {**self.__dict__, "_storage": None, "_study": None}

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__getstate__().items() if k not in SETTINGS}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # no ConcurrencyLimiter: `at_capacity` keeps the limit, finalists included

    # --- the study ---------------------------------------------------------------------
    @property
    def storage(self):
        if self._storage is None:
            self._storage = journal_storage(Path(self.folder))
        return self._storage

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler)
        return self._study

    def study_trial(self, trial_id: str):
        return self.storage.get_trial(storage_trial_id(self.storage, self.study_name, self.numbers[trial_id]))

    def report(self, trial_id: str, result: dict | None) -> None:
        """The result's value at step = its epoch (again after a resume: the value the trial
        reports now is the one the Parquet store keeps, so it replaces the one before)."""
        if not result or self.metric not in result or "epoch" not in result:
            return
        self.epoch_seconds[trial_id] = float(result.get("epoch_seconds", 0.0))
        value = float(result[self.metric])
        if not math.isnan(value) and not self.study_trial(trial_id).state.is_finished():
            set_intermediate(self.storage, self.study_name, self.numbers[trial_id], int(result["epoch"]), value)

    def tell(self, trial_id: str, state: TrialState) -> None:
        trial = self.study_trial(trial_id)
        if trial.state.is_finished():
            return  # told by a driver before a crash
        told = trial.intermediate_values
        if state == TrialState.COMPLETE and not told:
            state = TrialState.PRUNED
        self.study.tell(trial.number, min(told.values()) if state == TrialState.COMPLETE else None, state=state)

    # --- Tune's calls ------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if self.clock.is_spent():
            return Searcher.FINISHED
        if self.at_capacity():
            return None
        if len(self.numbers) - len(self.finals.of) < self.trials:
            return self.screening_trial(trial_id)
        return self.finalist(trial_id)

    def at_capacity(self) -> bool:
        return bool(self.max_concurrent) and len(self.running) >= self.max_concurrent

    def screening_trial(self, trial_id: str) -> dict:
        number = self.orphan()
        trial = self.study.ask() if number is None else self.study.get_trials(deepcopy=False)[number]
        self.storage.set_trial_user_attr(storage_trial_id(self.storage, self.study_name, trial.number),
                                         TUNE_ID_ATTR, trial_id)
        self.numbers[trial_id] = trial.number
        self.running.add(trial_id)
        values = self.space_fn(trial)
        config = self.configs[trial_id] = {**trial.params, **values}
        if trial.user_attrs.get(BASELINE_KEY):
            self.baseline = trial_id
            config[BASELINE_KEY] = True
        return config

    def orphan(self) -> int | None:
        """A study trial asked after Tune's last snapshot, before the driver died: Tune,
        resumed from the snapshot, never knew it and asks for a new trial in its place, which
        runs that trial's configuration instead of adding a second one to the study."""
        known = set(self.numbers.values())
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known and TUNE_ID_ATTR in trial.user_attrs \
                    and WARM_START_ATTR not in trial.user_attrs:
                return trial.number
        return None

    def finalist(self, trial_id: str) -> dict | None:
        if self.running - set(self.finals.of) - {self.baseline}:
            return None  # the finalists are chosen once every trial is screened
        chosen = self.finals.next()
        if chosen is None:
            if self.finals.running():
                return None  # one may yet fail and hand its place on
            for left in self.finals.left():  # no finalist needed them (the store: driver.finish)
                self.tell(left, TrialState.PRUNED)
            return Searcher.FINISHED
        self.finals.start(trial_id, chosen)
        self.numbers[trial_id] = self.numbers[chosen]
        self.running.add(trial_id)
        config = {**self.finals.configs[chosen], FINALS_OF: chosen}
        left_s = (self.max_epochs - self.finals.rung) * self.epoch_seconds.get(chosen, 0.0)
        if self.finalist_cpus and left_s >= LONG_FINALS_S:
            config[CPUS_KEY] = self.finalist_cpus
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.numbers:
            self.report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.running:
            return  # told already (a silent error, then Tune's own call)
        self.running.discard(trial_id)
        self.report(trial_id, result)
        epoch = int((result or {}).get("epoch", 0))
        if trial_id in self.finals.of:
            self.finals.end(trial_id, completed=not error and epoch >= self.max_epochs)
            if error:
                self.tell(trial_id, TrialState.FAIL)
            elif epoch >= self.max_epochs:
                self.tell(trial_id, TrialState.COMPLETE)
            return  # stopped by the budget: RUNNING until the store's status reaches it
        if not error and trial_id != self.baseline and self.finals.rung is not None \
                and epoch >= self.finals.rung and epoch < self.max_epochs:
            value = self.study_trial(trial_id).intermediate_values.get(self.finals.rung, math.nan)
            self.finals.screened(trial_id, value, self.configs[trial_id])
            return  # it waits, RUNNING in the study
        self.tell(trial_id, TrialState.FAIL if error else
                  TrialState.COMPLETE if epoch >= self.max_epochs else TrialState.PRUNED)


class SilentErrors(Callback):
    """Tells the searcher of trials Tune ended in error without telling it (a reused actor
    whose reset failed), so that they hold no place of `--max-concurrent` forever."""

    def __init__(self, searcher: StudySearcher):
        self.searcher = searcher

    def on_step_begin(self, iteration, trials, **info):
        for trial in trials:
            if trial.status == trial.ERROR and trial.trial_id in self.searcher.running:
                self.searcher.on_trial_complete(trial.trial_id, trial.last_result, error=True)

