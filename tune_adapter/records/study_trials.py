"""Rows of trials.parquet as Optuna trials: the study a search told, rebuilt from Parquet
(for the report's importances, and for --warm-start and a --continue of a search from
before journals, search/study.py)."""

from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import FrozenTrial, TrialState

# The study state that stands for each status of trials.parquet ("stopped": by the time budget).
STATES = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "stopped": TrialState.PRUNED,
          "error": TrialState.FAIL, "running": TrialState.RUNNING}


def study_trial(row: dict, curve: dict[int, float], distributions: dict[str, BaseDistribution],
                user_attrs: dict) -> FrozenTrial | None:
    """The trial a row of trials.parquet stands for: a completed one's value its best val_l1,
    `curve` (epoch -> val_l1) its intermediate values. None: a completed row without a value,
    or a status the study has no state for."""
    state, value = STATES.get(row["status"]), row["best_val_l1"]
    if state is None or (state == TrialState.COMPLETE and is_missing(value)):
        return None
    # A param the trial did not sample (conditional) or the metadata has no distribution for
    # is left out of the trial, as Optuna would have it.
    params = {name: native(row[name], dist) for name, dist in distributions.items()
              if not is_missing(row.get(name))}
    return optuna.trial.create_trial(
        state=state, value=float(value) if state == TrialState.COMPLETE else None,
        params=params, distributions={name: distributions[name] for name in params},
        intermediate_values=curve, user_attrs=user_attrs)


def native(value, distribution: BaseDistribution):
    """A Parquet cell as the Python value the distribution holds (numpy ints, floats for
    ints after a missing value, ...)."""
    if isinstance(distribution, IntDistribution):
        return int(value)
    if isinstance(distribution, FloatDistribution):
        return float(value)
    if isinstance(distribution, CategoricalDistribution):
        return next((c for c in distribution.choices if c == value or str(c) == str(value)), value)
    return value


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
