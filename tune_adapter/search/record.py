"""A Tune callback on the driver that mirrors every result into the Parquet store.

It keeps no state worth pickling: Tune pickles callbacks into its experiment snapshot, so
the store is (re)opened in `setup`, from the Parquet files when resuming.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.result import SHOULD_CHECKPOINT

from ..results import ExperimentInfo, TrialStore
from .optuna_pruned import BASELINE_KEY


def error_message(trial) -> str:
    """The last line of the trial's latest traceback: the exception and its message.

    Read from the driver's staging copy first: Tune writes it just before it tells the
    callbacks, and the copy in storage (`get_error`) arrives with the next sync, so a
    trial's first failure is not there yet.
    """
    staged = trial.error_file
    if staged and os.path.isfile(staged):
        text = Path(staged).read_text()
    else:
        error = trial.get_error()
        text = str(error) if error is not None else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed (no error text was saved)"


def is_baseline(trial) -> bool:
    return bool(trial.config.get(BASELINE_KEY, False))


class StoreCallback(Callback):
    def __init__(self, folder: Path, info: ExperimentInfo):
        self.folder, self.info = Path(folder), info
        self.store: TrialStore | None = None
        self.started: dict[str, float] = {}
        self.elapsed: dict[str, float] = {}  # wall seconds of earlier runs (before a resume)

    def __getstate__(self):
        return {"folder": self.folder, "info": self.info, "store": None, "started": {}, "elapsed": {}}

    def setup(self, **info):
        self.store = TrialStore(self.folder, self.info)
        self.elapsed = {t: r.wall_seconds for t, r in self.store.trials.items()}

    def params_of(self, trial) -> dict:
        return {p: trial.config.get(p) for p in self.info.params}

    def wall_seconds(self, trial) -> float:
        start = self.started.setdefault(trial.trial_id, time.monotonic())
        return self.elapsed.get(trial.trial_id, 0.0) + time.monotonic() - start

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # A result that carries a checkpoint is written once, with it (`on_checkpoint`): the
        # trial waits for the driver after each report, and each write cost it ~30 ms in a profile.
        self.store.record_epoch(trial.trial_id, self.params_of(trial), result, self.wall_seconds(trial),
                                write=not result.get(SHOULD_CHECKPOINT, False), baseline=is_baseline(trial))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Tune calls this right after on_trial_result for the same report.
        epoch = (trial.last_result or {}).get("epoch")
        if epoch is not None:
            self.store.record_checkpoint(trial.trial_id, int(epoch), checkpoint.path)
        else:
            self.store.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get("epoch", 0)
        status = "completed" if epochs >= self.info.max_epochs else "pruned"
        self.store.record_end(trial.trial_id, self.params_of(trial), status, baseline=is_baseline(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.store.record_end(trial.trial_id, self.params_of(trial), "error", error_message(trial),
                              baseline=is_baseline(trial))
