"""The experiment behind docs/report.png: a small real search, without Ray.

Optuna's TPE sampler proposes each trial (ask/tell, the define-by-run style of the shipped
spaces, search_spaces/), the real trainer fits the adapter on the tiny
synthetic dataset (teacher window W=5), every epoch is recorded in a TrialStore, and
trials are stopped early by ASHA's rule for one bracket (grace 2 epochs, reduction factor
2: at epochs 2, 4 and 8 a trial continues only if it is in the better half of the trials
that reached that epoch before it). Then it writes the report.

    python docs/demo_search.py results/adapter-demo    # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution, IntDistribution, distribution_to_json

from tune_adapter.config import TrainConfig
from tune_adapter.data import load_data
from tune_adapter.report import write_report
from tune_adapter.results import ExperimentInfo, TrialStore
from tune_adapter.synth import SynthSpec, write_synth
from tune_adapter.trainer import train

SPACE = {
    "lr": FloatDistribution(1e-5, 3e-2, log=True),
    "batch_size": IntDistribution(2, 16),
    "audio_window": IntDistribution(1, 9, step=2),
    "weight_decay": FloatDistribution(0.0, 0.1),
}
TRIALS = 24
MAX_EPOCHS = 16
RUNGS = (2, 4, 8)


class Stopped(Exception):
    """Raised from the epoch report to end a trial that lost at a rung."""


def main(folder: Path) -> None:
    data_dir = folder.parent / f"{folder.name}-data"
    if not (data_dir / "train.json").exists():
        write_synth(data_dir, SynthSpec(train_clips=96, val_clips=24))
    data = load_data(data_dir / "train.json", data_dir / "val.json")
    info = ExperimentInfo(name=folder.name, params=list(SPACE), max_epochs=MAX_EPOCHS,
                          num_samples=TRIALS, space="docs/demo_search.py",
                          distributions={k: distribution_to_json(d) for k, d in SPACE.items()})
    store = TrialStore(folder, info)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=8))
    rungs: dict[int, list[float]] = {r: [] for r in RUNGS}
    for number in range(TRIALS):
        asked = study.ask(SPACE)
        status = run_trial(store, f"demo_{number:05d}", asked.params, data, folder, rungs)
        record = store.trials[f"demo_{number:05d}"]
        best = min(m["val_l1"] for m in record.epochs.values())
        study.tell(asked, best if status == "completed" else None,
                   state=optuna.trial.TrialState.COMPLETE if status == "completed"
                   else optuna.trial.TrialState.PRUNED)
        print(f"{record.trial_id} {status:9s} epochs {len(record.epochs)} best val_l1 {best:.4f} {asked.params}")
    print(write_report(folder, folder / "report.html"))


def run_trial(store, trial_id, params, data, folder, rungs) -> str:
    config = TrainConfig(epochs=MAX_EPOCHS, intermediate_dim=32, device="cpu", seed=0, **params)
    started = time.perf_counter()

    def report(metrics, checkpoint):
        store.record_epoch(trial_id, params, metrics, wall_seconds=time.perf_counter() - started)
        if checkpoint:
            store.record_checkpoint(trial_id, metrics["epoch"], str(checkpoint))
        if metrics["epoch"] in rungs:
            rung = rungs[metrics["epoch"]]
            loses = len(rung) >= 2 and metrics["val_l1"] > float(np.median(rung))
            rung.append(metrics["val_l1"])
            if loses:
                raise Stopped

    try:
        train(config, data, report=report, output_dir=folder / "trials" / trial_id)
    except Stopped:
        store.record_end(trial_id, params, "pruned")
        return "pruned"
    store.record_end(trial_id, params, "completed")
    return "completed"


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/adapter-demo"))
