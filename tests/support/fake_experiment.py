"""A small, seeded, made-up search written through the real TrialStore, for report tests.

Curves decay towards a floor that depends on the parameters (best near lr 1e-3, W 5), so
the figures look like a search's; an ASHA-like rule stops trials whose val_l1 at a rung is
worse than the median of the trials that reached it before; one trial fails."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)

from tune_adapter.records.results import ExperimentInfo, TrialStore

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 3e-2, log=True),
    "batch_size": IntDistribution(1, 16),
    "audio_window": IntDistribution(1, 9, step=2),
    "weight_decay": FloatDistribution(0.0, 0.1),
}
MAX_EPOCHS = 8
RUNGS = (2, 4)
# The search settings (SearchOptions' names) whose ASHA rungs below MAX_EPOCHS are RUNGS:
# the finals rung (scheduler.finals_rung) is RUNGS[-1].
SCHEDULER = {"grace_period": 2, "reduction_factor": 2}
ERROR_TRIAL = 5
ERROR_MESSAGE = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"


@dataclass
class FakeTrial:
    trial_id: str
    params: dict
    status: str
    val_l1: list[float] = field(default_factory=list)  # by epoch, from epoch 1

    @property
    def best_val_l1(self) -> float:
        return min(self.val_l1)


def write_fake_experiment(folder: Path, trials: int = 10, seed: int = 0,
                          distributions=DISTRIBUTIONS, baseline: dict | None = None,
                          finalists: int | None = None, search: dict | None = None) -> list[FakeTrial]:
    """`baseline`: trial 0's params, marked as the search's baseline and never stopped.
    `finalists`: as a search with finalists (scheduler.py): a trial that passes the last of
    RUNGS waits there until every trial has been screened, then the best `finalists` of the
    waiting ones (by val_l1 there) train to the end and the others end there as pruned.
    `search`: what the description records as its extra["search"] (e.g. SCHEDULER and
    finalists, as a search records its settings)."""
    rng = np.random.default_rng(seed)
    info = ExperimentInfo(name=Path(folder).name, params=list(distributions), max_epochs=MAX_EPOCHS,
                          num_samples=trials, space="default",
                          distributions={k: distribution_to_json(d) for k, d in distributions.items()},
                          extra={} if search is None else {"search": dict(search)})
    store = TrialStore(folder, info)
    made: list[FakeTrial] = []
    wait_at = RUNGS[-1] if finalists is not None else None
    for number in range(trials):
        params = _sample(rng, distributions)
        is_baseline = baseline is not None and number == 0
        trial = FakeTrial(f"4c1d2_{number:05d}", {**params, **baseline} if is_baseline else params, "completed")
        _run(store, trial, rng, made, fails=number == ERROR_TRIAL, baseline=is_baseline, wait_at=wait_at)
        made.append(trial)
    if wait_at is not None:
        waiting = sorted((t for t in made if t.status == "waiting"), key=lambda t: t.val_l1[wait_at - 1])
        for trial in waiting[:finalists]:
            trial.status = "completed"
            _run(store, trial, rng, made, fails=False)  # on from the rung, to the end
        for trial in waiting[finalists:]:
            trial.status = "pruned"
            store.record_end(trial.trial_id, trial.params, "pruned")
    return made


def _sample(rng, distributions) -> dict:
    params = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            params[name] = d.choices[int(rng.integers(len(d.choices)))]
        elif isinstance(d, IntDistribution):
            params[name] = int(rng.choice(np.arange(d.low, d.high + 1, d.step)))
        elif d.log:
            params[name] = float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        else:
            params[name] = float(rng.uniform(d.low, d.high))
    return params


def _run(store: TrialStore, trial: FakeTrial, rng, earlier: list[FakeTrial], fails: bool,
         baseline: bool = False, wait_at: int | None = None) -> None:
    """Trains the trial on from its last epoch; `wait_at`: a trial that passes this rung
    stops there, status "waiting", still running in the store (the baseline goes on)."""
    p = trial.params
    lr_miss = math.log10(p.get("lr", 1e-3) / 1e-3)
    floor = 0.03 + 0.05 * lr_miss ** 2 + 0.02 * abs(p.get("audio_window", 5) - 5) / 2
    rate = 0.2 + 0.5 * min(1.0, p.get("lr", 1e-3) / 1e-3)
    for epoch in range(len(trial.val_l1) + 1, MAX_EPOCHS + 1):
        val_l1 = (floor + (0.8 - floor) * math.exp(-rate * epoch)) * (1 + 0.02 * rng.standard_normal())
        trial.val_l1.append(val_l1)
        metrics = {"epoch": epoch, "train_loss": val_l1 * 0.95, "val_l1": val_l1,
                   "val_mse": val_l1 ** 2 * 1.6, "val_cos": 1 - val_l1 / 2, "epoch_seconds": 3.0,
                   "step": epoch * 40}
        # A real folder: the store lists only checkpoints that still exist.
        checkpoint = store.folder / f"trial_{trial.trial_id}" / f"checkpoint_{epoch - 1:06d}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        store.record_epoch(trial.trial_id, p, metrics, wall_seconds=3.0 * epoch, baseline=baseline)
        store.record_checkpoint(trial.trial_id, epoch, str(checkpoint))
        if fails:
            trial.status = "error"
            store.record_end(trial.trial_id, p, "error", ERROR_MESSAGE)
            return
        if epoch in RUNGS and not baseline and _below_median(trial, epoch, earlier):
            trial.status = "pruned"
            store.record_end(trial.trial_id, p, "pruned")
            return
        if epoch == wait_at and not baseline:
            trial.status = "waiting"
            return
    store.record_end(trial.trial_id, p, "completed")


def _below_median(trial: FakeTrial, epoch: int, earlier: list[FakeTrial]) -> bool:
    seen = [t.val_l1[epoch - 1] for t in earlier if len(t.val_l1) >= epoch and t.status != "error"]
    return len(seen) >= 2 and trial.val_l1[epoch - 1] > float(np.median(seen))
