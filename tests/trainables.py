"""Trainables for Ray tests: importable by module name from Ray's worker processes."""

import os
import time
from pathlib import Path

import torch
from ray import tune

from tune_adapter.search.trial import run_trial


def flaky_trial(config, setup):
    """Fails every attempt of trials with batch size 8, after recording the attempt."""
    if config["batch_size"] == 8:
        marker = Path(setup.experiment_dir).parent / "attempts"
        marker.mkdir(exist_ok=True)
        (marker / f"{tune.get_context().get_trial_id()}-{time.monotonic_ns()}").touch()
        raise RuntimeError("injected failure for batch size 8")
    run_trial(config, setup)


def barrier_trial(config, setup):
    """Waits until $BARRIER_TRIALS trials run at once, then reports what it saw."""
    wanted = int(os.environ["BARRIER_TRIALS"])
    folder = Path(setup.experiment_dir).parent / "running"
    folder.mkdir(exist_ok=True)
    (folder / tune.get_context().get_trial_id()).touch()
    deadline = time.monotonic() + 120
    while len(list(folder.iterdir())) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} trials ran at once")
        time.sleep(0.05)
    seen = {"epoch": 1, "val_l1": 1.0, "concurrent": len(list(folder.iterdir())),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "torch_sees_cuda": torch.cuda.is_available()}
    tune.report(seen)
