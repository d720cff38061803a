"""End-to-end searches on tiny dims: Ray Tune + Optuna + ASHA + the Parquet store."""

import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pyarrow.fs as pafs
import pytest
import torch
from tests.support.fakes import random_adapter, write_infinitetalk
from safetensors import safe_open

from tune_adapter.data import load_data
from tune_adapter.export import load_exported
from tune_adapter.records.results import read_info, read_trials
from tune_adapter.trainer import evaluate_pack
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.space import SHIPPED_DIR
from tests.support.trainables import flaky_trial
from tests.support.tfevents import sessions

# The module's searches share one local Ray (conftest.local_ray).
pytestmark = pytest.mark.usefixtures("local_ray")

TINY = SHIPPED_DIR / "tiny.py"


def options(tmp_path, synth, **overrides) -> SearchOptions:
    values = dict(space=TINY, manifest=synth["train"], val_manifest=synth["val"], num_samples=4,
                  max_epochs=3, grace_period=1, reduction_factor=2, storage=tmp_path / "results",
                  name="tiny", quiet=True, seed=0)
    values.update(overrides)
    return SearchOptions(**values)


@pytest.mark.slow
def test_a_search_writes_one_row_per_trial(tmp_path, synth_small):
    outcome = run_search(options(tmp_path, synth_small, num_samples=5))
    assert outcome.complete
    folder = outcome.experiment_dir
    # pyarrow and pandas both read them; every parameter is its own column.
    trials_table = pq.read_table(folder / "trials.parquet")
    assert {"lr", "batch_size", "audio_window", "intermediate_dim"} <= set(trials_table.column_names)
    trials = read_trials(folder)
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 5 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "pruned"}
    assert (trials["status"] == "completed").any()
    assert sorted(trials["number"]) == list(range(5))
    for row in trials.to_dict("records"):
        mine = epochs[epochs["trial_id"] == row["trial_id"]]
        # Epoch 0: the starting point, measured before the first step; never the best.
        assert list(mine["epoch"]) == list(range(0, row["epochs"] + 1))
        start = mine[mine["epoch"] == 0].iloc[0]
        assert pd.isna(start["checkpoint"]) and row["start_val_l1"] == start["val_l1"]
        trained = mine[mine["epoch"] >= 1]
        assert row["best_val_l1"] == pytest.approx(trained["val_l1"].min())
        assert (row["status"] == "completed") == (row["epochs"] == 3)
        assert Path(row["best_checkpoint"], "adapter.safetensors").is_file()
        trial_dir = Path(row["best_checkpoint"]).parent
        assert any(p.name.startswith("events.out.tfevents") for p in trial_dir.iterdir())
    assert read_info(folder).params == ["audio_window", "batch_size", "intermediate_dim", "lr"]
    assert epochs["val_l1"].notna().all() and epochs["step"].dtype.kind == "i"


@pytest.mark.slow
def test_the_study_holds_every_epoch_and_the_baseline_runs_first_and_whole(tmp_path, synth_small):
    import optuna

    from tune_adapter.search.study import TUNE_ID_ATTR, journal_storage, mismatches
    from tune_adapter.space import load_space

    outcome = run_search(options(tmp_path, synth_small, num_samples=7, max_epochs=4))
    folder = outcome.experiment_dir
    trials = read_trials(folder)
    assert (trials["status"] == "pruned").any(), "the seeded search pruned no trial"
    # The journal on disk, as optuna-dashboard and optuna.load_study read it: one trial per
    # row, in its state, every epoch (the one ASHA stopped it on included) a value.
    assert mismatches(folder, "tiny") == []
    study = optuna.load_study(study_name="tiny", storage=journal_storage(folder))
    number_of = {t.user_attrs[TUNE_ID_ATTR]: t.number for t in study.trials}
    baseline = trials[trials["baseline"]]
    assert len(baseline) == 1
    row = baseline.iloc[0]
    assert number_of[row["trial_id"]] == 0  # the first trial the sampler gave
    assert row["status"] == "completed" and row["epochs"] == 4
    assert {k: row[k] for k in load_space(TINY).baseline} == load_space(TINY).baseline


@pytest.mark.slow
def test_no_baseline_turns_it_off(tmp_path, synth_small):
    outcome = run_search(options(tmp_path, synth_small, num_samples=2, max_epochs=1, baseline=False))
    assert not read_trials(outcome.experiment_dir)["baseline"].any()


def test_an_existing_experiment_needs_resume(tmp_path, synth_small):
    from tune_adapter.errors import ConfigError

    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "stray").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        run_search(options(tmp_path, synth_small))
    with pytest.raises(ConfigError, match="no search to resume"):
        run_search(options(tmp_path, synth_small, resume=True, name="other"))


@pytest.mark.slow
def test_a_failing_trial_is_retried_then_recorded(tmp_path, synth_small):
    outcome = run_search(options(tmp_path, synth_small, num_samples=6, max_failures=2), trainable=flaky_trial)
    trials = read_trials(outcome.experiment_dir)
    failed = trials[trials["batch_size"] == 8]
    assert len(failed) >= 1, "the seeded space sampled no batch size 8"
    assert (failed["status"] == "error").all()
    assert failed["error"].str.contains("RuntimeError: injected failure for batch size 8").all()
    # The search went on: every other trial finished normally.
    others = trials[trials["batch_size"] != 8]
    assert len(trials) == 6 and set(others["status"]) <= {"completed", "pruned"}
    attempts = list((outcome.experiment_dir.parent / "attempts").iterdir())
    for trial_id in failed["trial_id"]:
        assert sum(p.name.startswith(trial_id) for p in attempts) == 3  # 1 + max_failures
    # TensorBoard's HParams tab: one session per trial whatever its end, none of Ray's (hparams.py).
    runs = sessions(outcome.experiment_dir)
    assert len(runs["."]["experiments"]) == 1
    for row in trials.to_dict("records"):
        run = runs[f"trial_{row['trial_id']}"]
        assert run["starts"] == 1 and run["params"] == pytest.approx({p: row[p] for p in run["params"]})
        assert set(run["params"]) == {"audio_window", "batch_size", "intermediate_dim", "lr"}
        assert run["scalars"]["hparams/last_epoch"][1] == row["epochs"]
        if row["status"] != "error":
            assert run["scalars"]["hparams/best_val_l1"][1] == pytest.approx(row["best_val_l1"])


@pytest.mark.slow
def test_search_results_and_best_commands(tmp_path, synth_small):
    import io
    import json

    from typer.testing import CliRunner

    from tune_adapter.cli import app

    runner = CliRunner()
    storage = tmp_path / "results"
    result = runner.invoke(app, [
        "search", "--space", str(TINY), "--manifest", str(synth_small["train"]),
        "--val-manifest", str(synth_small["val"]), "--num-samples", "3", "--max-epochs", "2",
        "--storage", str(storage), "--name", "cli"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("search cli", "running", "pending", "done", "pruned", "failed", "best val_l1",
                 "baseline val_l1", "(baseline)", "top 5 trials", "trials.parquet"):
        assert text in result.output
    folder = storage / "cli"
    csv = runner.invoke(app, ["results", "--experiment", str(folder), "--format", "csv"])
    assert csv.exit_code == 0
    frame = pd.read_csv(io.StringIO(csv.stdout))
    assert len(frame) == 3 and {"trial_id", "lr", "best_val_l1"} <= set(frame.columns)
    epochs = runner.invoke(app, ["results", "--experiment", str(folder), "--epochs", "--format", "json"])
    rows = json.loads(epochs.stdout)
    assert {r["trial_id"] for r in rows} == set(frame["trial_id"]) and all("val_l1" in r for r in rows)
    best = runner.invoke(app, ["best", "--experiment", str(folder), "--top", "2"], env={"COLUMNS": "160"})
    assert best.exit_code == 0 and "top 2 trials" in best.output
    base = frame[frame["baseline"]].iloc[0]
    assert f"{base['trial_id']} (baseline)" in best.output  # shown wherever it ranks
    assert f"against baseline {base['trial_id']}" in best.output or "did not beat its baseline" in best.output
    winner = frame.sort_values("best_val_l1").iloc[0]
    assert f"#1 {winner['trial_id']}" in best.output

    # The winner, exported, loads strictly into a fresh model and scores what the trial scored.
    out = tmp_path / "export"
    exported = runner.invoke(app, ["best", "--experiment", str(folder), "--export", str(out)])
    assert exported.exit_code == 0, exported.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trial_id"] == winner["trial_id"]
    assert config["audio_window"] == winner["audio_window"]
    model = load_exported(out)  # strict=True
    val = load_data(synth_small["val"], synth_small["val"]).val
    metrics = evaluate_pack(model, val)
    for key in ("val_l1", "val_mse", "val_cos"):
        assert metrics[key] == pytest.approx(winner[f"best_{key}"], rel=1e-5)

    # --merge-into: a copy of InfiniteTalk's weights with the winner's audio_proj.* inside.
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(model.dims, seed=1))
    merged = runner.invoke(app, ["best", "--experiment", str(folder), "--export", str(tmp_path / "m"),
                                 "--merge-into", str(target)])
    assert merged.exit_code == 0, merged.output
    with safe_open(tmp_path / "m" / "infinitetalk.safetensors", "pt") as new, safe_open(target, "pt") as old:
        assert set(new.keys()) == set(old.keys())
        for key in new.keys():
            if key.startswith("audio_proj."):
                assert torch.equal(new.get_tensor(key), model.state_dict()[key.removeprefix("audio_proj.")])
            else:
                assert torch.equal(new.get_tensor(key), old.get_tensor(key))


def test_each_node_removes_only_its_own_dead_trials_scratch(tmp_path, monkeypatch):
    """The experiment folder may be on storage two nodes share: node a cannot see node b's
    processes, so it must leave node b's folders alone, even those whose PID it lacks."""
    from tune_adapter.search import trial

    def scratch(node: str, pid: int) -> Path:
        with monkeypatch.context() as m:
            m.setenv("TUNE_ADAPTER_NODE_NAME", node)
            m.setattr(trial.os, "getpid", lambda: pid)
            folder = tmp_path / f"{trial.scratch_prefix()}abc"
        folder.mkdir()
        return folder

    dead = 999_999_999  # above any pid_max: no process has it
    dead_on_a, live_on_a, dead_on_b = scratch("node-a", dead), scratch("node-a", os.getpid()), scratch("node-b", dead)
    other = tmp_path / "unrelated"
    other.mkdir()
    monkeypatch.setenv("TUNE_ADAPTER_NODE_NAME", "node-a")
    trial.remove_stale_scratch(tmp_path)
    assert not dead_on_a.exists() and live_on_a.exists() and dead_on_b.exists() and other.exists()
    monkeypatch.setenv("TUNE_ADAPTER_NODE_NAME", "node-b")
    trial.remove_stale_scratch(tmp_path)
    assert not dead_on_b.exists() and live_on_a.exists()


def test_a_result_with_a_checkpoint_is_written_once_with_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ray.tune.result import SHOULD_CHECKPOINT

    from tune_adapter.records.results import ExperimentInfo, TrialStore
    from tune_adapter.search.record import StoreCallback

    writes = []
    monkeypatch.setattr(TrialStore, "write", lambda self: writes.append(len(self.trials)))
    callback = StoreCallback(tmp_path, ExperimentInfo(name="x", params=["lr"], max_epochs=2))
    callback.setup()
    trial = SimpleNamespace(trial_id="t1", config={"lr": 1e-3}, last_result={"epoch": 1})
    result = {"epoch": 1, "val_l1": 0.5, SHOULD_CHECKPOINT: True}
    callback.on_trial_result(0, [], trial, result)
    assert writes == []
    callback.on_checkpoint(0, [], trial, SimpleNamespace(path=str(tmp_path / "checkpoint_000000"),
                                                         filesystem=pafs.LocalFileSystem()))
    assert len(writes) == 1
    assert callback.store.trials["t1"].checkpoints == {1: str(tmp_path / "checkpoint_000000")}
    callback.on_trial_result(0, [], trial, {"epoch": 2, "val_l1": 0.4})  # no checkpoint: at once
    assert len(writes) == 2 and set(callback.store.trials["t1"].epochs) == {1, 2}
