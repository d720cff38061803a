"""TPE that compares trials where the search does: by their value at the finals rung.

With finalists (scheduler.py), most trials end at or before the finals rung, and the best
of them wait there, RUNNING in the study, until every trial is screened. Stock TPE ranks
every COMPLETE trial above every pruned one and treats RUNNING ones as bad (its constant
liar), so for most of a search its best examples would be the baseline (the only trial
that completes early) and it would steer away from the waiting trials, the best found.
Here the wrapped sampler samples from a copy of the study in memory, made for each trial
asked, in which each trial that reached the rung is COMPLETE with its value there (what
the finalists are chosen by); trials stopped before it stay PRUNED, and RUNNING ones
below it stay RUNNING. The copy holds every trial in the study's order, so numbers match.
"""

from __future__ import annotations

import copy

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from .sampler_wrapper import SamplerWrapper


class ScreeningSampler(SamplerWrapper):
    def __init__(self, base: BaseSampler, rung: int):
        super().__init__(base)
        self.rung = rung
        self.screened: tuple[int, optuna.Study] | None = None  # (trial number, the copy made for it)

    def __getstate__(self):
        return {**self.__dict__, "screened": None}

    def before_trial(self, study, trial) -> None:
        self.screened = (trial.number, screened_study(study, self.rung))
        self.base.before_trial(self.seen(study, trial), trial)

    def seen(self, study, trial) -> optuna.Study:
        """The copy made for this trial; for a trial asked before it (none), one made now."""
        if self.screened is None or self.screened[0] != trial.number:
            self.screened = (trial.number, screened_study(study, self.rung))
        return self.screened[1]

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(self.seen(study, trial), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(self.seen(study, trial), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(self.seen(study, trial), trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)


def screened_study(study: optuna.Study, rung: int) -> optuna.Study:
    """The study in memory as the wrapped sampler reads it: every trial, at the rung."""
    seen = optuna.create_study(directions=study.directions)
    seen.add_trials([at_rung(t, rung) for t in study.get_trials(deepcopy=False)])
    return seen


def at_rung(trial: FrozenTrial, rung: int) -> FrozenTrial:
    value = trial.intermediate_values.get(rung)
    if value is None or trial.state not in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return trial
    seen = copy.copy(trial)
    seen.state, seen.value = TrialState.COMPLETE, value
    seen.datetime_complete = trial.datetime_complete or trial.datetime_start  # a finished trial has one
    return seen
