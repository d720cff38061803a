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


def fake_gpu_trial(config, setup):
    """run_trial on a make-believe CUDA machine: torch.cuda claims a GPU, the memory calls
    are recorded, and the trainer is replaced by one that records its device and reports
    (or, at batch size 8, runs out of GPU memory). Each call is appended to
    <experiment>-probe/<trial>.jsonl as it happens."""
    import json
    from unittest import mock

    import tune_adapter.search.trial as trial_module
    from tune_adapter.trainer import TrainResult

    probe = Path(f"{setup.experiment_dir}-probe")
    probe.mkdir(exist_ok=True)
    calls = probe / f"{tune.get_context().get_trial_id()}.jsonl"

    def record(*call):
        with open(calls, "a") as f:
            f.write(json.dumps(call) + "\n")

    def fake_train(train_config, data, report, **kwargs):
        record("train", train_config.device)
        if train_config.batch_size == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        report({"epoch": 1, "step": 1, "train_loss": 1.0, "val_l1": 1.0, "val_mse": 1.0,
                "val_cos": 0.0, "epoch_seconds": 0.0}, None)
        return TrainResult()

    fakes = {
        "is_available": lambda: True,
        "set_per_process_memory_fraction": lambda fraction, device=None: record("cap", fraction, str(device)),
        "empty_cache": lambda: record("empty_cache"),
    }
    with mock.patch.multiple(torch.cuda, **fakes), mock.patch.object(trial_module, "train", fake_train):
        run_trial(config, setup)


def interrupting_trial(config, setup):
    """run_trial, but the first trial to start first sends the driver ($TUNE_ADAPTER_TEST_DRIVER_PID)
    one SIGINT, as Ctrl-C would: Tune then stops the search, to be resumed."""
    import signal

    try:
        with open(Path(f"{setup.experiment_dir}-interrupted"), "x"):
            pass
    except FileExistsError:
        pass
    else:
        os.kill(int(os.environ["TUNE_ADAPTER_TEST_DRIVER_PID"]), signal.SIGINT)
    run_trial(config, setup)
