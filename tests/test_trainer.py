import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tune_adapter.checkpoint import load_checkpoint
from tune_adapter.config import TrainConfig
from tune_adapter.data import load_data
from tune_adapter.errors import ConfigError
from tune_adapter.trainer import train

SMALL = dict(lr=3e-3, batch_size=4, intermediate_dim=32, epochs=3)


@pytest.fixture
def small_data(synth_small):
    return load_data(synth_small["train"], synth_small["val"])


def weights(folder):
    return load_file(folder / "adapter.safetensors")


def test_the_trainer_runs_without_ray(synth_small, tmp_path):
    """A training run, checkpoints included, in a fresh interpreter that never loads Ray."""
    code = (
        "import sys\n"
        "from tune_adapter.config import TrainConfig\n"
        "from tune_adapter.data import load_data\n"
        "from tune_adapter.trainer import train\n"
        f"data = load_data({str(synth_small['train'])!r}, {str(synth_small['val'])!r})\n"
        f"result = train(TrainConfig(epochs=1, batch_size=4, device='cpu'), data, output_dir={str(tmp_path)!r})\n"
        "assert result.best_checkpoint is not None\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_reports_every_epoch_with_a_complete_checkpoint(small_data, tmp_path):
    reports = []

    def report(metrics, folder):
        if metrics["epoch"] == 0:  # the start: validated, nothing to checkpoint
            assert folder is None and metrics["step"] == 0
            return
        assert {"adapter.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"} <= {p.name for p in folder.iterdir()}
        state = json.loads((folder / "state.json").read_text())
        reports.append((metrics, state["epoch"]))

    result = train(TrainConfig(**SMALL), small_data, report=report, output_dir=tmp_path)
    assert [epoch for _, epoch in reports] == [1, 2, 3]
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    for metrics, _ in reports:
        assert {"train_loss", "val_l1", "val_mse", "val_cos", "step"} <= set(metrics)
    # No staging folders left behind; only the best and the last checkpoint are kept.
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert all(not name.startswith(".") for name in kept)
    assert kept == sorted({result.best_checkpoint.name, result.last_checkpoint.name})


@pytest.mark.slow
def test_deterministic_on_cpu(small_data, tmp_path):
    a = train(TrainConfig(**SMALL), small_data, output_dir=tmp_path / "a")
    b = train(TrainConfig(**SMALL), small_data, output_dir=tmp_path / "b")
    assert a.history[-1]["val_l1"] == b.history[-1]["val_l1"]
    wa, wb = weights(a.last_checkpoint), weights(b.last_checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(TrainConfig(**{**SMALL, "seed": 1}), small_data)
    assert c.history[-1]["val_l1"] != a.history[-1]["val_l1"]


@pytest.mark.slow
def test_resume_continues_exactly(small_data, tmp_path):
    straight = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=tmp_path / "s")
    train(TrainConfig(**{**SMALL, "epochs": 2}), small_data, output_dir=tmp_path / "r")
    resumed = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=tmp_path / "r",
                    resume_from=tmp_path / "r" / "checkpoints" / "epoch_0002")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history[-1]["val_l1"] == straight.history[-1]["val_l1"]
    ws, wr = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    state = load_checkpoint(resumed.last_checkpoint)
    assert state.optimizer["state"][0]["step"] == straight.history[-1]["step"]


def test_resume_refuses_other_dims(small_data, tmp_path):
    train(TrainConfig(**{**SMALL, "epochs": 1}), small_data, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="dims"):
        train(TrainConfig(**{**SMALL, "audio_window": 3}), small_data,
              resume_from=tmp_path / "checkpoints" / "epoch_0001")


@pytest.mark.slow
def test_learns_the_synthetic_teacher(synth_frame):
    """On tiny dims, val_l1 falls below half its first-epoch value within 10 epochs."""
    data = load_data(synth_frame["train"], synth_frame["val"])
    result = train(TrainConfig(lr=3e-3, batch_size=4, epochs=10), data)
    curve = [h["val_l1"] for h in result.history]
    assert curve[-1] < 0.5 * curve[0], curve
    assert result.history[-1]["val_cos"] > result.history[0]["val_cos"]


def test_latent_targets(synth_latent):
    data = load_data(synth_latent["train"], synth_latent["val"])
    result = train(TrainConfig(**{**SMALL, "epochs": 4}), data)
    assert result.history[-1]["val_l1"] < result.history[0]["val_l1"]


def test_mixed_precision_trains(small_data):
    result = train(TrainConfig(**{**SMALL, "mixed_precision": True}), small_data)
    curve = [h["val_l1"] for h in result.history]
    assert curve[-1] < curve[0]


def test_worker_processes_give_the_same_batches(small_data):
    inline = train(TrainConfig(**{**SMALL, "epochs": 2}), small_data)
    workers = train(TrainConfig(**{**SMALL, "epochs": 2, "num_workers": 1}), small_data)
    assert inline.history[-1]["val_l1"] == workers.history[-1]["val_l1"]


@pytest.mark.parametrize("loss", ["mse", "smooth_l1"])
def test_other_losses_train_and_report_the_same_metrics(small_data, loss):
    result = train(TrainConfig(**{**SMALL, "epochs": 2, "loss": loss}), small_data)
    assert {"val_l1", "val_mse", "val_cos"} <= set(result.history[-1])


def test_cpu_tuning_changes_no_result(small_data):
    tuned = train(TrainConfig(**SMALL), small_data)
    plain = train(TrainConfig(**{**SMALL, "cpu_tuning": False}), small_data)
    assert [{**h, "epoch_seconds": 0} for h in tuned.history] == \
        [{**h, "epoch_seconds": 0} for h in plain.history]


def test_checkpoints_of_earlier_versions_still_load(small_data, tmp_path):
    from tune_adapter.checkpoint import LEGACY_OPTIMIZER_FILE, OPTIMIZER_REST, OPTIMIZER_TENSORS

    result = train(TrainConfig(**{**SMALL, "epochs": 1}), small_data, output_dir=tmp_path)
    folder = result.last_checkpoint
    saved = load_checkpoint(folder)
    (folder / OPTIMIZER_TENSORS).unlink()
    (folder / OPTIMIZER_REST).unlink()
    torch.save({"optimizer": saved.optimizer, "scaler": None}, folder / LEGACY_OPTIMIZER_FILE)
    legacy = load_checkpoint(folder)
    assert legacy.optimizer["param_groups"] == saved.optimizer["param_groups"]
    for index, values in saved.optimizer["state"].items():
        for name, value in values.items():
            assert torch.equal(legacy.optimizer["state"][index][name], value)


def test_a_last_checkpoint_without_moments_still_resumes_with_a_warning(small_data, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 2, "moments_in_last_checkpoint": False})
    result = train(config, small_data, output_dir=tmp_path)
    names = {p.name for p in result.last_checkpoint.iterdir()}
    assert names == {"adapter.safetensors", "state.json"}
    assert "optimizer.safetensors" in {p.name for p in result.best_checkpoint.iterdir()} or \
        result.best_checkpoint == result.last_checkpoint
    with pytest.warns(UserWarning, match="moments start afresh"):
        more = train(TrainConfig(**{**SMALL, "epochs": 3}), small_data, resume_from=result.last_checkpoint)
    assert [h["epoch"] for h in more.history] == [0, 1, 2, 3]  # epoch 0: the start


def kept_checkpoints(output_dir):
    return sorted(p.name for p in (output_dir / "checkpoints").glob("epoch_*"))


def test_a_resumed_run_keeps_and_retires_checkpoints_as_an_uninterrupted_one(small_data, tmp_path):
    straight = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=tmp_path / "s")
    train(TrainConfig(**{**SMALL, "epochs": 2}), small_data, output_dir=tmp_path / "r")
    resumed = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=tmp_path / "r",
                    resume_from=tmp_path / "r" / "checkpoints" / "epoch_0002")
    assert kept_checkpoints(tmp_path / "r") == kept_checkpoints(tmp_path / "s")
    assert resumed.best_checkpoint.name == straight.best_checkpoint.name


def test_a_best_epoch_before_the_resume_stays_the_best_saved_checkpoint(small_data, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**{**SMALL, "epochs": 2}), small_data, output_dir=out)
    assert kept_checkpoints(out) == ["epoch_0002"]  # the best and the last
    # Make epoch 2 unbeatable: the epochs after the resume must not displace it.
    state_file = out / "checkpoints" / "epoch_0002" / "state.json"
    state = json.loads(state_file.read_text())
    state["history"][-1]["val_l1"] = 0.0
    state_file.write_text(json.dumps(state))
    result = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=out,
                   resume_from=out / "checkpoints" / "epoch_0002")
    assert result.best["epoch"] == 2
    assert result.best_checkpoint == out / "checkpoints" / "epoch_0002"
    assert result.best_checkpoint_metrics["val_l1"] == 0.0
    assert kept_checkpoints(out) == ["epoch_0002", "epoch_0004"]  # epoch 3 was retired


def test_a_checkpoint_resumed_from_elsewhere_is_never_retired(small_data, tmp_path):
    train(TrainConfig(**{**SMALL, "epochs": 2}), small_data, output_dir=tmp_path / "a")
    source = tmp_path / "a" / "checkpoints" / "epoch_0002"
    result = train(TrainConfig(**{**SMALL, "epochs": 4}), small_data, output_dir=tmp_path / "b",
                   resume_from=source)
    assert (source / "state.json").is_file() and result.best_checkpoint.parent.parent == tmp_path / "b"
