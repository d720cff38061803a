"""Parameter importances by Optuna (fANOVA) on a study rebuilt from the trial store.

With finalists (search/scheduler.py) only the finalists and the baseline complete: every
other trial ends at or before the finals rung. So fANOVA reads every trial that reached
that rung, with its val_l1 there (the value the finalists were chosen by, as the search's
sampler reads it: search/screening.py). An experiment without a finals rung (--finalists 0,
or a record without the scheduler settings) is read by its completed trials' best val_l1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.distributions import BaseDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from ..records.results import ExperimentInfo
from ..records.study_trials import study_trial
from .experiment import Experiment

# fANOVA fits a random forest to the trials; with fewer the numbers mean little.
MIN_TRIALS = 3
SEED = 0
# The scheduler settings a search records (ExperimentInfo.extra["search"]), named as
# SearchOptions names them; with info.max_epochs they give the finals rung.
SCHEDULER_KEYS = ("grace_period", "reduction_factor", "finalists")


@dataclass
class Importances:
    values: dict[str, float]  # param -> importance, largest first; empty when not computed
    note: str = ""  # why there are none, or what was left out
    caption: str = ""  # what they were computed on: evaluator, trials, n
    method: str = "fANOVA"


def param_importances(experiment: Experiment) -> Importances:
    """fANOVA on val_l1 at the finals rung of the trials that reached it; without a finals
    rung, on the best val_l1 of the completed trials."""
    rung, why_not = finals_epoch(experiment.info)
    study = rebuild_study(experiment)
    if rung is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        caption = (f"fANOVA (seed {SEED}): best val_l1 of the completed trials, n = {len(trials)} "
                   f"({why_not})")
        return _fanova(experiment, study, trials, caption, every="completed trial",
                       across="completed trials", need="completed trials")
    trials = screened(study, rung)
    short = sum(not _reached(t, rung) for t in study.trials)
    caption = (f"fANOVA (seed {SEED}): val_l1 at epoch {rung} (the finals rung, where the finalists "
               f"are chosen) of the {len(trials)} trials that reached it"
               + (f"; the {short} that did not are left out" if short else ""))
    at_rung_study = empty_study()
    at_rung_study.add_trials(trials)
    return _fanova(experiment, at_rung_study, trials, caption, every=f"trial at epoch {rung}",
                   across=f"trials at epoch {rung}", need=f"trials at epoch {rung} (the finals rung)")


def finals_epoch(info: ExperimentInfo) -> tuple[int | None, str]:
    """The search's finals rung (scheduler.finals_rung) and "", or None and why there is none."""
    search = info.extra.get("search") or {}
    missing = [key for key in SCHEDULER_KEYS if search.get(key) is None]
    if missing or not info.max_epochs:
        return None, ("this experiment records no grace period, reduction factor and finalists, "
                      "so its finals rung is unknown")
    if not search["finalists"]:
        return None, "no finals rung: --finalists 0, ASHA alone promoted trials to the end"
    from ..search.scheduler import finals_rung  # Ray: only for a record that has the settings

    grace, factor = int(search["grace_period"]), int(search["reduction_factor"])
    rung = finals_rung(grace, factor, info.max_epochs)
    if rung is None:
        return None, (f"no finals rung: with grace period {grace} and reduction factor {factor}, "
                      f"ASHA has no rung below max epochs {info.max_epochs}")
    return rung, ""


def screened(study: optuna.Study, rung: int) -> list[FrozenTrial]:
    """The study's trials that reached the rung with a finite val_l1, each COMPLETE with its
    value there, as the search's sampler reads them (screening.at_rung)."""
    from ..search.screening import at_rung

    trials = []
    for trial in study.get_trials(deepcopy=False):
        if not _reached(trial, rung):
            continue
        seen = at_rung(trial, rung)
        if seen.state != TrialState.COMPLETE:
            continue  # a failed trial: the sampler leaves it out as well
        if seen.datetime_complete is None:  # a trial still running, past the rung
            seen.datetime_complete = seen.datetime_start
        trials.append(seen)
    return trials


def _reached(trial: FrozenTrial, rung: int) -> bool:
    """A finite val_l1 at the rung (a diverged trial's NaN is no value: Experiment.curve)."""
    value = trial.intermediate_values.get(rung)
    return value is not None and math.isfinite(value)


def _fanova(experiment: Experiment, study: optuna.Study, trials: list[FrozenTrial], caption: str,
            *, every: str, across: str, need: str) -> Importances:
    """fANOVA over the study's COMPLETE trials (`trials`); the other arguments name them
    in the sentences: one of them, all of them, and the kind there must be MIN_TRIALS of."""
    if len(trials) < MIN_TRIALS:
        return Importances({}, f"Importances need at least {MIN_TRIALS} {need}; "
                               f"this experiment has {len(trials)}.", caption)
    varying, constant = split_varying(experiment, trials)
    left_out = f" Left out (one value in every {every}): {', '.join(constant)}." if constant else ""
    if len(varying) < 2:
        what = f"only {varying[0]} varies" if varying else "no parameter varies"
        return Importances({}, f"Importances compare parameters, and {what} across the "
                               f"{across}.{left_out}", caption)
    try:
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=SEED),
                                       params=varying)
    except RuntimeError:  # fANOVA finds no variance: every trial scored the same
        return Importances({}, f"Every {every} has the same value, so no parameter explains "
                               "a difference.", caption)
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
