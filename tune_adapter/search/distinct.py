"""A sampler that never hands out a configuration the study already holds.

TPE and random sampling draw each parameter on its own and may repeat a whole
configuration: in a small discrete space, or once a `--continue`d or warm-started study
already covers much of it. Training a configuration twice teaches the search nothing, so
this draws the space's parameters together (Optuna's relative sampling), each from the
wrapped sampler, and draws again while the result repeats a trial of the study.
"""

from __future__ import annotations

import random

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from .sampler_wrapper import SamplerWrapper

REDRAWS = 64  # of the wrapped sampler, before a uniform pick among configurations left


class DistinctSampler(SamplerWrapper):
    def __init__(self, base: BaseSampler, space: dict[str, BaseDistribution], seed: int = 0):
        super().__init__(base)
        self.space = dict(space)
        self.rng = random.Random(seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study, trial, search_space) -> dict:
        if not search_space:
            return {}
        seen = {_key(t.params, search_space) for t in study.get_trials(deepcopy=False)
                if t.number != trial.number and t.state != TrialState.WAITING}
        params = {}
        for _ in range(REDRAWS):
            params = {n: self.base.sample_independent(study, trial, n, d) for n, d in search_space.items()}
            if _key(params, search_space) not in seen:
                return params
        return self.unseen(search_space, seen) or params

    def unseen(self, search_space: dict, seen: set) -> dict | None:
        """A configuration not yet run, when the space is finite and small enough to list."""
        grids = [_choices(d) for d in search_space.values()]
        if any(g is None for g in grids) or _product(len(g) for g in grids) > 100_000:
            return None
        import itertools

        left = [c for c in itertools.product(*grids) if tuple(c) not in seen]
        return dict(zip(search_space, self.rng.choice(left))) if left else None



def _key(params: dict, search_space: dict) -> tuple:
    return tuple(params.get(name) for name in search_space)


def _choices(distribution: BaseDistribution) -> list | None:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return None


def _product(sizes) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total
