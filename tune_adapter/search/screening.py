"""TPE that compares trials where the search does: by their value at the finals rung.

With finalists (scheduler.py), most trials end at or before the finals rung, and the best
of them wait there, RUNNING in the study, until every trial is screened. Stock TPE ranks
every COMPLETE trial above every pruned one and treats RUNNING ones as bad (its constant
liar), so for most of a search its best examples would be the baseline (the only trial
that completes early) and it would steer away from the waiting trials, the best found.
Here the wrapped sampler sees each trial that reached the rung as COMPLETE with its value
there (what the finalists are chosen by); trials stopped before it stay PRUNED, and
RUNNING ones below it stay RUNNING.
"""

from __future__ import annotations

import copy

from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from .sampler_wrapper import SamplerWrapper


class ScreeningSampler(SamplerWrapper):
    def __init__(self, base: BaseSampler, rung: int):
        super().__init__(base)
        self.rung = rung

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(ScreenedStudy(study, self.rung), trial)

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(ScreenedStudy(study, self.rung), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.base.sample_independent(ScreenedStudy(study, self.rung), trial, param_name,
                                            param_distribution)


class ScreenedStudy:
    """The study as the wrapped sampler reads it; everything else is the study itself."""

    def __init__(self, study, rung: int):
        self._study, self._rung = study, rung

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = [at_rung(t, self._rung) for t in self._study._get_trials(deepcopy=False, use_cache=use_cache)]
        return [t for t in trials if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._get_trials(states=states)


def at_rung(trial: FrozenTrial, rung: int) -> FrozenTrial:
    value = trial.intermediate_values.get(rung)
    if value is None or trial.state not in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return trial
    seen = copy.copy(trial)
    seen.state, seen.value = TrialState.COMPLETE, value
    return seen
