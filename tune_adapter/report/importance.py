"""Parameter importances by Optuna (fANOVA) on a study rebuilt from the trial store."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.distributions import BaseDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from ..study_trials import study_trial
from .experiment import RANK_METRIC, Experiment

# fANOVA fits a random forest to the completed trials; with fewer the numbers mean little.
MIN_COMPLETED = 3
SEED = 0


@dataclass
class Importances:
    values: dict[str, float]  # param -> importance, largest first; empty when not computed
    note: str = ""  # why there are none, or what was left out
    caption: str = ""  # what they were computed on: evaluator, trials, n
    method: str = "fANOVA"


def param_importances(experiment: Experiment) -> Importances:
    study = rebuild_study(experiment)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    caption = f"fANOVA (seed {SEED}): best val_l1 of the completed trials, n = {len(completed)}"
    if len(completed) < MIN_COMPLETED:
        return Importances({}, f"Importances need at least {MIN_COMPLETED} completed trials; "
                               f"this experiment has {len(completed)}.", caption)
    varying, constant = split_varying(experiment, completed)
    left_out = f" Left out (one value in every completed trial): {', '.join(constant)}." if constant else ""
    if len(varying) < 2:
        what = f"only {varying[0]} varies" if varying else "no parameter varies"
        return Importances({}, f"Importances compare parameters, and {what} across the "
                               f"completed trials.{left_out}", caption)
    try:
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=SEED),
                                       params=varying)
    except RuntimeError:  # fANOVA finds no variance: every completed trial scored the same
        return Importances({}, f"Every completed trial has the same {RANK_METRIC}, so no "
                               "parameter explains a difference.", caption)
    return Importances({name: float(v) for name, v in values.items()}, left_out.strip(), caption)


def rebuild_study(experiment: Experiment) -> optuna.Study:
    """An in-memory study holding every trial: the value is its best val_l1; pruned trials
    carry their per-epoch val_l1 as intermediate values, as they would under an Optuna pruner."""
    study = empty_study()
    distributions = experiment.distributions()
    for row in experiment.trials.to_dict("records"):  # a param name need not be an identifier
        trial = _frozen_trial(experiment, row, distributions)
        if trial is not None:
            study.add_trial(trial)
    return study


def empty_study() -> optuna.Study:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        return optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)


def _frozen_trial(experiment: Experiment, row: dict, distributions: dict[str, BaseDistribution]):
    curve = experiment.curve(row["trial_id"])
    return study_trial(row, dict(zip(curve["epoch"].astype(int).tolist(), curve["val_l1"].astype(float).tolist())),
                       distributions, {"trial_id": row["trial_id"]})


def split_varying(experiment: Experiment, completed) -> tuple[list[str], list[str]]:
    names = [name for name in experiment.distributions() if all(name in t.params for t in completed)]
    varying = [n for n in names if len({repr(t.params[n]) for t in completed}) > 1]
    return varying, [n for n in names if n not in varying]
