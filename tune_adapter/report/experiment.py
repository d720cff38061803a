"""An experiment as the report reads it: trials.parquet + epochs.parquet + their metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from optuna.distributions import BaseDistribution, json_to_distribution

from ..errors import UserError
from ..records.results import ExperimentInfo, open_experiment, read_pair

RANK_METRIC = "best_val_l1"  # the trial store keeps each trial's best epoch by val_l1


@dataclass
class Experiment:
    folder: Path
    info: ExperimentInfo
    trials: pd.DataFrame  # one row per trial, in `number` order
    epochs: pd.DataFrame  # one row per trial per epoch, by trial then epoch

    @property
    def params(self) -> list[str]:
        return list(self.info.params)

    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distributions the metadata records (a param may lack one)."""
        return {name: json_to_distribution(text) for name, text in self.info.distributions.items()
                if name in self.info.params}

    def ranked(self) -> pd.DataFrame:
        """Trials that reported a val_l1, best first (ties: the earlier trial first)."""
        scored = self.trials[self.trials[RANK_METRIC].notna()]
        return scored.sort_values([RANK_METRIC, "number"], kind="stable")

    def best(self) -> pd.Series:
        return self.ranked().iloc[0]

    def status_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.trials["status"].value_counts().items()}

    def curve(self, trial_id: str) -> pd.DataFrame:
        rows = self.epochs[self.epochs["trial_id"] == trial_id]
        return rows[rows["val_l1"].notna()]


def load_experiment(folder: Path) -> Experiment:
    """Read and check an experiment folder; a folder the report cannot use is a UserError."""
    folder, info = open_experiment(folder)
    trials_table, epochs_table = read_pair(folder)  # of one write: a search may be running
    trials = trials_table.to_pandas().sort_values("number", kind="stable").reset_index(drop=True)
    epochs = epochs_table.to_pandas().sort_values(["trial_id", "epoch"], kind="stable")
    experiment = Experiment(folder, info, trials, epochs.reset_index(drop=True))
    if trials.empty or experiment.ranked().empty:
        raise UserError(f"{folder} has no trial with a val_l1 yet: wait for the search's "
                        "first epochs, then run the report again")
    return experiment

