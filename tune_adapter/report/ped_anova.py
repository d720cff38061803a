"""Parameter importances that count pruned trials: Optuna's PED-ANOVA on every trial's
val_l1 at one epoch, the highest epoch that enough trials reached."""

from __future__ import annotations

import math
import warnings

import optuna
import pandas as pd
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from ..records.study_trials import study_trial
from .experiment import Experiment
from .importance import Importances, empty_study, split_varying

# PED-ANOVA compares the parameters of the best TARGET_QUANTILE of the trials with those of
# all of them; Optuna's default (0.1) leaves a single trial in the best tenth of a small search.
TARGET_QUANTILE = 0.2
# "Enough" trials at an epoch: 10 puts at least 2 in the best fifth (a density of one point
# says nothing), while ASHA, halving the field at each rung, still leaves a later epoch 10.
MIN_AT_EPOCH = 10


def epoch_importances(experiment: Experiment) -> Importances:
    """PED-ANOVA on val_l1 at the highest epoch at least MIN_AT_EPOCH trials reached."""
    epoch, values = deepest_epoch(experiment.epochs)
    if epoch is None:
        return Importances({}, _too_few(experiment.epochs), method="PED-ANOVA")
    study = epoch_study(experiment, values)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    caption = (f"PED-ANOVA: val_l1 at epoch {epoch}, the highest epoch {MIN_AT_EPOCH} or more trials "
               f"reached; n = {len(trials)} trials incl. pruned")
    varying, constant = split_varying(experiment, trials)
    left_out = (f" Left out (one value in every trial at epoch {epoch}): {', '.join(constant)}."
                if constant else "")
    if len(varying) < 2:
        what = f"only {varying[0]} varies" if varying else "no parameter varies"
        return Importances({}, f"Importances compare parameters, and {what} across the trials at "
                               f"epoch {epoch}.{left_out}", caption, "PED-ANOVA")
    if values.nunique() == 1:
        return Importances({}, f"Every trial has the same val_l1 at epoch {epoch}, so no parameter "
                               "explains a difference.", caption, "PED-ANOVA")
    # Deterministic (Parzen estimates on a fixed grid): it takes no seed, unlike fANOVA.
    evaluator = PedAnovaImportanceEvaluator(target_quantile=TARGET_QUANTILE)
    with warnings.catch_warnings():  # its small-sample warnings: the caption gives n instead
        warnings.simplefilter("ignore")
        result = get_param_importances(study, evaluator=evaluator, params=varying)
    return Importances({name: float(v) for name, v in result.items()}, left_out.strip(), caption,
                       "PED-ANOVA")


def deepest_epoch(epochs: pd.DataFrame) -> tuple[int | None, pd.Series]:
    """The highest trained epoch (epoch 0 is the start) with a val_l1 from at least
    MIN_AT_EPOCH trials, and those values by trial_id; (None, empty) when there is none."""
    scored = epochs[(epochs["epoch"] >= 1) & epochs["val_l1"].notna()]
    scored = scored[scored["val_l1"].map(math.isfinite)]
    counts = scored.groupby("epoch")["trial_id"].nunique()
    enough = counts[counts >= MIN_AT_EPOCH]
    if enough.empty:
        return None, pd.Series(dtype=float)
    epoch = int(enough.index.max())
    at_epoch = scored[scored["epoch"] == epoch].drop_duplicates("trial_id", keep="last")
    return epoch, at_epoch.set_index("trial_id")["val_l1"].astype(float)


def epoch_study(experiment: Experiment, values: pd.Series) -> optuna.Study:
    """An in-memory study of the trials in `values`, each COMPLETE with its value at the
    epoch (PED-ANOVA reads only complete trials), whatever its status in the search."""
    study = empty_study()
    distributions = experiment.distributions()
    for row in experiment.trials[experiment.trials["trial_id"].isin(values.index)].to_dict("records"):
        at_epoch = {**row, "status": "completed", "best_val_l1": float(values[row["trial_id"]])}
        study.add_trial(study_trial(at_epoch, {}, distributions,
                                    {"trial_id": row["trial_id"], "status": row["status"]}))
    return study


def _too_few(epochs: pd.DataFrame) -> str:
    trained = epochs[(epochs["epoch"] >= 1) & epochs["val_l1"].notna()]
    most = int(trained.groupby("epoch")["trial_id"].nunique().max()) if not trained.empty else 0
    return (f"PED-ANOVA needs an epoch that at least {MIN_AT_EPOCH} trials reached (so that its "
            f"best fifth holds two or more); the most at any epoch is {most}.")
