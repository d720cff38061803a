"""On a CUDA GPU: a two-trial search at half a GPU each in mixed precision, stopped as by
Ctrl-C, resumed to the end, and its winner exported. Skipped where torch sees no CUDA."""

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.data import load_data
from tune_adapter.export import load_exported
from tune_adapter.records.results import read_epochs, read_trials
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.space import SHIPPED_DIR
from tune_adapter.trainer import evaluate_pack

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = SHIPPED_DIR / "tiny.py"


def test_half_gpu_trials_in_mixed_precision_resume_and_export(tmp_path, synth_small, monkeypatch):
    from tests.support.trainables import interrupting_trial

    monkeypatch.setenv("TUNE_ADAPTER_TEST_DRIVER_PID", str(os.getpid()))
    values = dict(space=TINY, manifest=synth_small["train"], val_manifest=synth_small["val"],
                  num_samples=2, max_epochs=3, grace_period=3,  # no early stopping: both run 3 epochs
                  gpus_per_trial=0.5, cpus_per_trial=1, mixed_precision=True,
                  storage=tmp_path / "results", name="gpu", quiet=True, seed=0)
    stopped = run_search(SearchOptions(**values), trainable=interrupting_trial)
    assert not stopped.complete
    # Tune restores only the same trainable; its marker file keeps it from interrupting again.
    resumed = run_search(SearchOptions(**values, resume=True), trainable=interrupting_trial)
    assert resumed.complete

    trials = read_trials(resumed.experiment_dir)
    epochs = read_epochs(resumed.experiment_dir)
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 6
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    for row in trials.to_dict("records"):
        state = json.loads(Path(row["best_checkpoint"], "state.json").read_text())
        assert state["config"]["device"] == "cuda"
        assert state["precision"] == ("bf16" if native_bf16 else "fp16")

    out = tmp_path / "export"
    exported = CliRunner().invoke(app, ["best", "--experiment", str(resumed.experiment_dir),
                                        "--export", str(out)])
    assert exported.exit_code == 0, exported.output
    config = json.loads((out / "adapter_config.json").read_text())
    winner = trials.set_index("trial_id").loc[config["trial_id"]]
    assert config["epoch"] == winner["best_epoch"]
    # Scored in float32 on the CPU here, in mixed precision on the GPU in the trial.
    metrics = evaluate_pack(load_exported(out), load_data(synth_small["val"], synth_small["val"]).val)
    assert metrics["val_l1"] == pytest.approx(winner["best_val_l1"], rel=0.05)
