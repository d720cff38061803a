"""`tune-adapter confirm`: a tiny search's best configurations rerun over seeds, a held-out
test set kept apart, and `best --export` of the confirmed winner."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.support.tfevents import sessions
from tune_adapter.cli import app
from tune_adapter.records.confirmation import (
    CONFIRM_EPOCHS_FILE,
    CONFIRM_FILE,
    advantage_line,
    paired_bootstrap,
    read_confirm,
    summarize,
)
from tune_adapter.records.results import read_epochs, read_info, read_trials
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.space import SHIPPED_DIR

# The module's searches share one local Ray (conftest.local_ray).
pytestmark = pytest.mark.usefixtures("local_ray")

ROOT = Path(__file__).resolve().parents[2]
TINY = SHIPPED_DIR / "tiny.py"
WIDE = {"COLUMNS": "200"}


def absolute_entries(manifest: Path) -> list[dict]:
    entries = json.loads(manifest.read_text())
    return [{**e, "audio": str((manifest.parent / e["audio"]).resolve()),
             "target": str((manifest.parent / e["target"]).resolve())} for e in entries]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, synth_small):
    """A 3-trial search on 9 of synth_small's training clips, then `confirm --top 2 --seeds 3`
    with the other 3 as the test set."""
    work = tmp_path_factory.mktemp("confirm")
    clips = absolute_entries(synth_small["train"])
    (work / "train.json").write_text(json.dumps(clips[:9]))
    (work / "test.json").write_text(json.dumps(clips[9:]))
    options = SearchOptions(space=TINY, manifest=work / "train.json", val_manifest=synth_small["val"],
                            num_samples=3, max_epochs=2, grace_period=1, reduction_factor=2,
                            storage=work / "results", name="tiny", quiet=True, seed=0,
                            cache_dir=work / "cache")
    folder = run_search(options).experiment_dir
    result = CliRunner().invoke(app, ["confirm", "--experiment", str(folder), "--top", "2", "--seeds", "3",
                                      "--test-manifest", str(work / "test.json")], env=WIDE)
    assert result.exit_code == 0, result.output
    return {"work": work, "folder": folder, "output": result.output}


@pytest.mark.slow
def test_confirm_reruns_the_top_configurations_over_seeds(confirmed):
    folder = confirmed["folder"]
    trials, runs = read_trials(folder), read_confirm(folder)
    top2 = set(trials.sort_values("best_val_l1").head(2)["trial_id"])
    expected = top2 | set(trials[trials["baseline"]]["trial_id"])
    assert set(runs["trial_id"]) == expected and len(runs) == 3 * len(expected) >= 6
    assert (runs["status"] == "completed").all() and (runs["epochs"] == 2).all()
    for _, group in runs.groupby("trial_id"):
        assert sorted(group["seed"]) == [0, 1, 2]
    assert runs[["test_l1", "test_mse", "test_cos", "best_val_l1"]].notna().all().all()
    assert runs["checkpoint"].map(lambda p: Path(p, "adapter.safetensors").is_file()).all()
    # The test metrics come from the best-val epoch's checkpoint.
    assert (runs["test_epoch"] == runs["best_epoch"]).all()
    epochs = pd.read_parquet(folder / CONFIRM_EPOCHS_FILE)
    # Epochs 1 and 2 of every run, and epoch 0: its start, measured before the first step.
    assert len(epochs) == 3 * len(runs) and set(epochs["run_id"]) == set(runs["run_id"])
    assert sorted(set(epochs["epoch"])) == [0, 1, 2]
    # Parameters are the search trial's.
    for row in runs.to_dict("records"):
        source = trials[trials["trial_id"] == row["trial_id"]].iloc[0]
        assert row["lr"] == source["lr"] and row["batch_size"] == source["batch_size"]
    for text in ("val_l1 mean ± sd", "test_l1 mean ± sd", "confirmed winner", "runner-up", "95% interval"):
        assert text in confirmed["output"]
    assert not (folder / "confirm" / ".scratch").exists()
    # TensorBoard's HParams tab stays the search's: confirm's runs add no session (hparams.py).
    tab = sessions(folder)
    assert [h.name for h in tab["."]["experiments"][0].hparam_infos] == read_info(folder).params
    assert {name for name, run in tab.items() if run["starts"]} == {f"trial_{t}" for t in trials["trial_id"]}


@pytest.mark.slow
def test_the_same_seed_reproduces_the_same_metrics(confirmed):
    """Seed 0 is the seed every search trial trained with: each configuration's seed-0 run
    repeats its search trial epoch by epoch; other seeds differ."""
    folder = confirmed["folder"]
    runs = read_confirm(folder)
    searched, rerun = read_epochs(folder), pd.read_parquet(folder / CONFIRM_EPOCHS_FILE)
    for trial_id in set(runs["trial_id"]):
        before = searched[searched["trial_id"] == trial_id].set_index("epoch")
        mine = rerun[rerun["trial_id"] == trial_id]
        seed0 = mine[mine["seed"] == 0].set_index("epoch").loc[before.index]
        np.testing.assert_allclose(seed0["val_l1"], before["val_l1"], rtol=1e-6)
        seed1 = mine[mine["seed"] == 1].set_index("epoch").loc[before.index]
        assert not np.allclose(seed1["val_l1"], before["val_l1"], rtol=1e-6)


def refused(folder: Path, test: Path) -> str:
    result = CliRunner().invoke(app, ["confirm", "--experiment", str(folder), "--top", "1", "--seeds", "1",
                                      "--test-manifest", str(test)], env=WIDE)
    assert result.exit_code == 2, result.output
    return result.output


@pytest.mark.slow
def test_a_test_set_sharing_a_clip_with_validation_is_refused(confirmed, synth_small, tmp_path):
    folder, work = confirmed["folder"], confirmed["work"]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    val = absolute_entries(synth_small["val"])
    clips = absolute_entries(work / "test.json")
    by_path = tmp_path / "by_path.json"
    by_path.write_text(json.dumps(clips[:1] + val[1:2]))
    out = refused(folder, by_path)
    assert "validation clip" in out and Path(val[1]["audio"]).name in out and len(out.strip().splitlines()) == 1
    # The same audio under another name: found by the hash of its tensor.
    copy = tmp_path / "renamed_audio.pt"
    shutil.copyfile(val[2]["audio"], copy)
    by_content = tmp_path / "by_content.json"
    by_content.write_text(json.dumps(clips[:1] + [{**val[2], "audio": str(copy)}]))
    out = refused(folder, by_content)
    assert "same audio as validation clip" in out and "renamed_audio.pt" in out
    # A training clip too.
    by_train = tmp_path / "by_train.json"
    by_train.write_text(json.dumps(absolute_entries(work / "train.json")[:1]))
    assert "training clip" in refused(folder, by_train)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before  # nothing written


@pytest.mark.slow
def test_best_export_exports_the_confirmed_winner(confirmed, tmp_path):
    folder = confirmed["folder"]
    runs = read_confirm(folder)
    summary = summarize(runs)
    winner = summary.iloc[0]["trial_id"]
    mine = runs[runs["trial_id"] == winner].sort_values("best_val_l1").iloc[0]
    runner = CliRunner()
    shown = runner.invoke(app, ["best", "--experiment", str(folder)], env=WIDE)
    assert shown.exit_code == 0 and "confirmation over seeds" in shown.output
    out = tmp_path / "export"
    result = runner.invoke(app, ["best", "--experiment", str(folder), "--export", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"confirmed winner {winner}" in result.output and mine["run_id"] in result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trial_id"] == winner and config["run_id"] == mine["run_id"] and config["seed"] == mine["seed"]
    section = config["confirm"]
    assert section["seeds"] == [0, 1, 2]
    assert section["val_l1_mean"] == pytest.approx(summary.iloc[0]["val_mean"])
    assert section["val_l1_sd"] == pytest.approx(summary.iloc[0]["val_sd"])
    assert section["test_l1_mean"] == pytest.approx(summary.iloc[0]["test_mean"])
    assert config["test_metrics"]["test_l1"] == pytest.approx(mine["test_l1"])
    from tune_adapter.export import load_exported
    from tune_adapter.trainer import evaluate_pack
    from tune_adapter.data import load_data

    test = load_data(confirmed["work"] / "test.json", confirmed["work"] / "test.json").val
    assert evaluate_pack(load_exported(out), test)["val_l1"] == pytest.approx(mine["test_l1"], rel=1e-5)


def test_a_confirmation_is_not_run_twice_without_resume(tmp_path):
    (tmp_path / "nothing").mkdir()
    result = CliRunner().invoke(app, ["confirm", "--experiment", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "trials.parquet" in result.output


# -- the statistics ------------------------------------------------------------------------


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    mean, low, high = paired_bootstrap([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (mean, low, high) == pytest.approx((0.5, 0.5, 0.5))


def test_paired_bootstrap_pairs_by_position_and_is_seeded():
    worse = [0.30, 0.20, 0.25, 0.22]
    better = [0.29, 0.21, 0.24, 0.23]  # differences +-0.01: noise
    mean, low, high = paired_bootstrap(worse, better)
    assert mean == pytest.approx(0.0, abs=1e-12) and low < 0 < high
    assert paired_bootstrap(worse, better) == (mean, low, high)
    # Unpaired, the spread between configurations would swamp it; paired, a steady gain shows.
    gain = paired_bootstrap([0.30, 0.20, 0.25, 0.22], [0.29, 0.19, 0.245, 0.21])
    assert 0 < gain[1] <= gain[0] <= gain[2]
    # Resamples of the four differences {0.01, 0.01, 0.005, 0.01}: means lie in [0.005, 0.01].
    assert gain[1] >= 0.005 - 1e-12 and gain[2] <= 0.01 + 1e-12
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_the_verdict_says_noise_when_the_interval_spans_zero():
    runs = pd.DataFrame({
        "trial_id": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "status": "completed",
        "baseline": [False] * 3 + [True] * 3,
        "best_val_l1": [0.10, 0.12, 0.11, 0.11, 0.11, 0.115], "test_l1": np.nan})
    line = advantage_line(runs, "a", "b", "baseline")
    assert "not distinguishable from noise" in line and "3 paired seeds" in line
    steady = runs.assign(best_val_l1=[0.10, 0.12, 0.11, 0.20, 0.22, 0.21])
    assert "noise" not in advantage_line(steady, "a", "b", "baseline")
    assert summarize(steady).iloc[0]["trial_id"] == "a"


@pytest.mark.slow
def test_the_report_has_a_confirmation_section(confirmed, tmp_path):
    from tune_adapter.report import write_report

    page = write_report(confirmed["folder"], tmp_path / "report.html").read_text()
    assert "Confirmation over seeds" in page and "confirmed winner" in page and "test_l1 mean" in page
    assert "alt='confirmed configurations&#x27; runs over seeds' src='data:image/png;base64," in page


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["5s"])  # bench --faults kills searches at 15 moments
def test_a_killed_confirmation_resumes_and_runs_every_run_once(confirmed, tmp_path, kill_after):
    """SIGKILLed (driver and its Ray) at the snapshot after its 5th record;
    `confirm --resume` then finishes it: every planned run once, no epoch twice."""
    import os
    import subprocess
    import sys

    from tune_adapter.bench.faults import KILL_AFTER_ENV

    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ("trials.parquet", "epochs.parquet"):  # the search alone, not its confirmation
        shutil.copy(confirmed["folder"] / name, folder / name)
    command = [sys.executable, "-m", "tune_adapter", "confirm", "--experiment", str(folder),
               "--top", "2", "--seeds", "2"]
    env = {**os.environ, KILL_AFTER_ENV: kill_after}
    killed = subprocess.run(command, env=env, cwd=ROOT, start_new_session=True, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    env.pop(KILL_AFTER_ENV)
    resumed = subprocess.run(command + ["--resume"], env=env, cwd=ROOT, start_new_session=True,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = read_confirm(folder)
    planned = {(t, s) for t in runs["trial_id"].unique() for s in (0, 1)}
    assert len(runs) == len(planned) and set(zip(runs["trial_id"], runs["seed"])) == planned
    assert runs["run_id"].is_unique and (runs["status"] == "completed").all()
    epochs = pd.read_parquet(folder / CONFIRM_EPOCHS_FILE)
    assert not epochs.duplicated(["run_id", "epoch"]).any()
    assert sorted(set(epochs["epoch"])) == [0, 1, 2]


def test_the_exported_run_is_ranked_by_the_epoch_it_exports(tmp_path):
    """With --checkpoint-every > 1 a run's best epoch may have no checkpoint: seed 0's best
    (0.10) is unsaved and its checkpoint scores 0.30, seed 1's checkpoint 0.20: seed 1 is
    exported, with the metrics of the epoch exported."""
    from tune_adapter.records.confirmation import winner_run

    for seed in (0, 1):
        (tmp_path / f"ckpt{seed}").mkdir()
    runs = pd.DataFrame({
        "trial_id": ["a", "a", "b"], "run_id": ["r0", "r1", "r2"], "seed": [0, 1, 0], "status": "completed",
        "baseline": [False, False, True], "best_val_l1": [0.10, 0.20, 0.40], "test_l1": [None] * 3,
        "checkpoint": [str(tmp_path / "ckpt0"), str(tmp_path / "ckpt1"), str(tmp_path / "ckpt1")],
        "checkpoint_epoch": [4, 6, 6], "checkpoint_val_l1": [0.30, 0.20, 0.40]})
    assert winner_run(runs)["run_id"] == "r1"
    older = runs.drop(columns=["checkpoint_epoch", "checkpoint_val_l1"])  # a file from before: best_val_l1
    assert winner_run(older)["run_id"] == "r0"


def test_a_finished_confirmation_run_is_not_trained_again_after_a_crash(tmp_path, monkeypatch):
    """Tune, restored from a stale snapshot, runs a finished run again: the trial finds it
    finished in confirm.parquet (beside Tune's confirm/ folder) and only reports its last epoch."""
    from types import SimpleNamespace

    from tune_adapter.records.confirmation import CONFIRM_FOLDER, SEED_KEY, SOURCE_KEY, ConfirmStore
    from tune_adapter.records.results import ExperimentInfo
    from tune_adapter.search import trial

    store = ConfirmStore(tmp_path, ExperimentInfo(name="x confirm", params=["lr", SEED_KEY, SOURCE_KEY], max_epochs=2))
    params = {"lr": 1e-3, SEED_KEY: 0, SOURCE_KEY: "t1"}
    metrics = {"val_l1": 0.5, "val_mse": 0.3, "val_cos": 0.9, "train_loss": 0.4, "epoch_seconds": 1.0, "step": 3}
    for epoch in (1, 2):
        store.record_epoch("run1", params, {**metrics, "epoch": epoch, "val_l1": 0.5 / epoch}, 1.0)
    store.record_end("run1", params, "completed")
    monkeypatch.setattr(trial.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "run1"))
    setup = SimpleNamespace(experiment_dir=str(tmp_path / CONFIRM_FOLDER))
    assert trial.recorded_result(setup, {}) == pytest.approx({**metrics, "epoch": 2, "val_l1": 0.25})
    monkeypatch.setattr(trial.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "run2"))
    assert trial.recorded_result(setup, {}) is None  # not finished: it trains


def test_a_lost_confirmation_run_leaves_no_checkpoint_behind(tmp_path):
    """A run Tune's snapshot never saw (it started after it) is dropped on resume, with its
    checkpoint folder under confirm/ (about 0.9 GB at InfiniteTalk's dims)."""
    from tune_adapter.records.confirmation import CONFIRM_FOLDER, SEED_KEY, SOURCE_KEY
    from tune_adapter.records.results import ExperimentInfo
    from tune_adapter.search.confirm import ConfirmCallback

    callback = ConfirmCallback(tmp_path, ExperimentInfo(name="x confirm", params=["lr", SEED_KEY, SOURCE_KEY],
                                                        max_epochs=2))
    callback.setup()
    checkpoint = tmp_path / CONFIRM_FOLDER / "trial_lost" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    metrics = {"val_l1": 0.5, "val_mse": 0.3, "val_cos": 0.9, "train_loss": 0.4, "epoch_seconds": 1.0, "step": 3}
    callback.store.record_epoch("lost", {"lr": 1e-3, SEED_KEY: 0, SOURCE_KEY: "t1"}, {**metrics, "epoch": 1}, 1.0)
    callback.store.record_checkpoint("lost", 1, str(checkpoint))
    callback.drop_lost_trials([])
    assert not checkpoint.parent.exists() and "lost" not in callback.store.trials


def test_a_resumed_confirmation_keeps_its_own_plan(tmp_path):
    """After a --continue the search's best trial may change: a resumed confirmation trains
    the runs it planned, so a run never resumes from another configuration's checkpoint."""
    from tune_adapter.records.results import ExperimentInfo, TrialStore
    from tune_adapter.search.confirm import ConfirmOptions, plan_runs, planned_runs

    store = TrialStore(tmp_path, ExperimentInfo(name="x", params=["lr"], max_epochs=1))
    metrics = {"val_mse": 0.3, "val_cos": 0.9, "train_loss": 0.4, "epoch_seconds": 1.0, "step": 3, "epoch": 1}
    store.record_epoch("old", {"lr": 1e-3}, {**metrics, "val_l1": 0.5}, 1.0)
    store.record_end("old", {"lr": 1e-3}, "completed")
    planned = plan_runs(read_trials(tmp_path), ["lr"], 1, 1)
    store.record_epoch("new", {"lr": 3e-3}, {**metrics, "val_l1": 0.2}, 1.0)  # a --continue's better trial
    store.record_end("new", {"lr": 3e-3}, "completed")
    options = ConfirmOptions(experiment=tmp_path, top=1, seeds=1)
    assert [r["source_trial"] for r in planned_runs(tmp_path, ["lr"], options, {"runs": planned})] == ["old"]
    assert [r["source_trial"] for r in planned_runs(tmp_path, ["lr"], options, None)] == ["new"]
