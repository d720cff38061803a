"""Does ASHA pay? The same configurations searched with ASHA and trained to the end.

First a search with ASHA (Optuna samples, ASHA stops weak trials); then every
configuration it tried is trained for max epochs with no early stopping (Tune's FIFO
scheduler, one grid point per configuration). Compared: the best
`val_l1` each finds and the epochs each spends.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..records.results import read_info, read_trials
from ..search.driver import fixed_points, max_concurrent, prepare_search, ray_session, run_search, trial_resources
from ..search.options import SearchOptions
from ..search.storage import linking_filesystem
from ..search.hparams import HParamsSessions, TensorBoardScalars
from ..search.record import StoreCallback
from ..search.trial import run_trial


@dataclass
class RunSummary:
    label: str
    best_val_l1: float
    epochs: int
    trials: int
    wall_seconds: float


@dataclass
class AshaComparison:
    asha: RunSummary
    full: RunSummary

    @property
    def gap(self) -> float:
        """How much worse ASHA's best is, relative to the unpruned best (0.03 = 3%)."""
        return self.asha.best_val_l1 / self.full.best_val_l1 - 1

    @property
    def epoch_share(self) -> float:
        return self.asha.epochs / self.full.epochs


def summarize(label: str, folder: Path, seconds: float) -> RunSummary:
    trials = read_trials(folder)
    return RunSummary(label, float(trials["best_val_l1"].min()), int(trials["epochs"].sum()),
                      len(trials), seconds)


def train_without_pruning(options: SearchOptions, configs: list[dict]) -> Path:
    """Every configuration to max epochs: FIFO scheduler, one grid point per configuration."""
    from ..search.tuner import TuneRun, make_tuner

    prepared = prepare_search(options)
    setup = replace(prepared.setup, finals_rung=None)  # no screening: every trial trains to the end
    with ray_session(options):
        resources = trial_resources(options)
        run = TuneRun(name=options.experiment_name, setup=setup, resources=resources,
                      storage={"storage_path": str(options.experiment_dir.parent),
                               "storage_filesystem": linking_filesystem()},
                      max_concurrent=max_concurrent(options, resources), max_failures=options.max_failures)
        store = StoreCallback(options.experiment_dir, prepared.info)
        callbacks = [store, TensorBoardScalars(), HParamsSessions(store)]
        make_tuner(run, run_trial, param_space=fixed_points(configs), callbacks=callbacks, num_samples=1).fit()
    return options.experiment_dir


def compare_asha(options: SearchOptions) -> AshaComparison:
    asha_options = replace(options, name=f"{options.experiment_name}-asha", quiet=True)
    started = time.monotonic()
    outcome = run_search(asha_options)
    asha = summarize("ASHA", outcome.experiment_dir, time.monotonic() - started)
    trials = read_trials(outcome.experiment_dir)
    params = read_info(outcome.experiment_dir).params
    configs = trials[params].to_dict("records")
    full_options = replace(options, name=f"{options.experiment_name}-full", quiet=True)
    started = time.monotonic()
    folder = train_without_pruning(full_options, [_plain(c) for c in configs])
    full = summarize("no pruning", folder, time.monotonic() - started)
    return AshaComparison(asha, full)


def _plain(config: dict) -> dict:
    """numpy scalars from pandas back to Python numbers, as the trainer's config wants."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}


def asha_sections(result: AshaComparison) -> list:
    from .report import Row, Section, verdict

    rows = []
    for run in (result.asha, result.full):
        rows += [Row(f"best val_l1, {run.label}", run.best_val_l1, ""),
                 Row(f"epochs, {run.label}", run.epochs, "epochs", f"{run.trials} trials"),
                 Row(f"wall time, {run.label}", run.wall_seconds, "s")]
    rows += [
        Row("ASHA best / unpruned best", 1 + result.gap, "x",
            verdict(result.gap <= 0.05, "target: within 5% of the unpruned best")),
        Row("ASHA epochs / unpruned epochs", result.epoch_share, "x",
            verdict(result.epoch_share <= 0.40, "target <= 0.40")),
    ]
    return [Section("ASHA against no pruning (same configurations)", rows)]


def bench_asha(work: Path, space: Path, trials: int = 16, epochs: int = 10) -> list:
    """ASHA against no pruning on the quickstart's synthetic per-frame data."""
    options = SearchOptions(space=space, storage=work / "results", num_samples=trials, max_epochs=epochs,
                            grace_period=1, reduction_factor=3, name=f"asha-{time.time_ns()}",
                            quiet=True, cache_dir=work / "cache")
    try:
        return asha_sections(compare_asha(options))
    finally:  # benchmark runs: their checkpoints would pile up run after run
        for suffix in ("asha", "full"):
            shutil.rmtree(options.storage / f"{options.experiment_name}-{suffix}", ignore_errors=True)
