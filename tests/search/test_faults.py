"""Faults: stopped searches, readers racing the driver, durable renames, retried trials."""

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tune_adapter import atomic
from tune_adapter.records.results import ExperimentInfo, TrialStore, read_pair
from tune_adapter.space import SHIPPED_DIR

TINY = SHIPPED_DIR / "tiny.py"
INFO = ExperimentInfo(name="x", params=["lr"], max_epochs=3)
METRICS = {"val_l1": 0.5, "val_mse": 0.3, "val_cos": 0.9, "train_loss": 0.4, "epoch_seconds": 1.0, "step": 3}


def test_a_search_stopped_before_its_first_result_prints_the_resume_hint(tmp_path, monkeypatch):
    """Ctrl-C before any result: no trials.parquet yet, and the hint is what the user needs."""
    from typer.testing import CliRunner

    import tune_adapter.search as search
    from tune_adapter.cli import app
    from tune_adapter.search.driver import SearchOutcome

    folder = tmp_path / "results" / "tiny"
    folder.mkdir(parents=True)
    monkeypatch.setattr(search, "run_search", lambda options, console=None, space=None: SearchOutcome(folder, 0, 4))
    result = CliRunner().invoke(app, ["search", "--space", str(TINY), "--storage", str(tmp_path / "results")])
    assert result.exit_code == 1, result.output
    assert "stopped with 0 of 4 trials finished" in result.output and "--resume" in result.output
    assert "has no trials.parquet" not in result.output


def store_with(folder: Path, trial_ids: list[str]) -> TrialStore:
    store = TrialStore(folder, INFO)
    for trial_id in trial_ids:
        store.record_epoch(trial_id, {"lr": 1e-3}, {**METRICS, "epoch": 1}, 1.0)
    return store


def test_a_reader_gets_both_files_of_one_write_when_the_driver_rewrites_between_its_reads(tmp_path, monkeypatch):
    """The driver rewrites both files (a new trial) after the reader read trials.parquet and
    before it reads epochs.parquet: the reader must not mix the two writes."""
    import tune_adapter.records.results as results

    old, new = tmp_path / "old", tmp_path / "new"
    store_with(old, ["a"])
    store_with(new, ["a", "b"])
    folder = tmp_path / "live"
    shutil.copytree(old, folder)
    read_table = results.read_table
    rewritten = []

    def read_then_rewrite(path):
        table = read_table(path)
        if path.name == results.TRIALS_FILE and not rewritten:
            for name in (results.TRIALS_FILE, results.EPOCHS_FILE):  # the driver's next write
                shutil.copy(new / name, folder / name)
            rewritten.append(True)
        return table

    monkeypatch.setattr(results, "read_table", read_then_rewrite)
    store = TrialStore(folder, INFO)
    assert set(store.trials) == {"a", "b"} and store.trials["b"].epochs


def test_a_pair_left_by_a_crash_between_the_two_renames_still_loads(tmp_path):
    """trials.parquet of one write, epochs.parquet of the next (or of the one before): the
    store loads what both name and goes on writing newer generations."""
    folder = tmp_path / "x"
    store_with(folder, ["a"])
    store_with(tmp_path / "next", ["a", "b"])
    shutil.copy(tmp_path / "next" / "epochs.parquet", folder / "epochs.parquet")
    trials, epochs = read_pair(folder, tries=2, pause_s=0)
    assert trials.num_rows == 1 and epochs.num_rows == 2
    store = TrialStore(folder, INFO)
    assert set(store.trials) == {"a"}
    store.write()
    assert read_pair(folder, tries=1)[0].schema.metadata[b"tune_adapter_generation"] == b"2"


@pytest.fixture
def fsyncs(monkeypatch):
    """The paths os.fsync was called on, in order, each with whether the final name existed."""
    calls = []
    real = os.fsync

    def record(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, fsyncs):
    target = tmp_path / "out.bin"
    atomic.atomic_write(target, lambda p: p.write_bytes(b"data"))
    assert fsyncs == [str(tmp_path / ".out.bin.tmp"), str(tmp_path)]
    assert target.read_bytes() == b"data"


def test_a_checkpoint_is_fsynced_file_by_file_then_its_folder_then_the_parent(tmp_path, fsyncs):
    from tune_adapter.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    folder = tmp_path / "epoch_0001"
    for _ in range(2):  # a new folder, then one written over an existing folder
        fsyncs.clear()
        save_checkpoint(folder, model, optimizer, None, {"epoch": 1})
        staging = tmp_path / ".epoch_0001.tmp"
        names = sorted(p.name for p in folder.iterdir())
        assert fsyncs == [str(staging / n) for n in names] + [str(staging), str(tmp_path)]
    assert load_checkpoint(folder).state == {"epoch": 1}


def test_the_trial_store_fsyncs_both_parquet_files(tmp_path, fsyncs):
    store_with(tmp_path, ["a"])
    assert fsyncs == [str(tmp_path / ".trials.parquet.tmp"), str(tmp_path),
                      str(tmp_path / ".epochs.parquet.tmp"), str(tmp_path)]


def test_wall_seconds_of_a_retried_trial_count_every_attempt(tmp_path, monkeypatch):
    from tune_adapter.search import record

    clock = [0.0]
    monkeypatch.setattr(record.time, "monotonic", lambda: clock[0])
    callback = record.StoreCallback(tmp_path, INFO)
    callback.setup()
    trial = SimpleNamespace(trial_id="t1", config={"lr": 1e-3}, last_result={"epoch": 1}, error_file=None,
                            get_error=lambda: "RuntimeError: boom")

    def at(seconds, event, *args):
        clock[0] = seconds
        getattr(callback, event)(0, [], trial, *args)

    at(0, "on_trial_start")
    at(10, "on_trial_result", {**METRICS, "epoch": 1})
    assert callback.store.trials["t1"].wall_seconds == 10
    at(12, "on_trial_recover")  # the first attempt failed after 12 s; Tune retries it
    at(20, "on_trial_start")
    at(25, "on_trial_result", {**METRICS, "epoch": 1})
    assert callback.store.trials["t1"].wall_seconds == 17
    at(30, "on_trial_error")
    assert callback.store.trials["t1"].wall_seconds == 22
    assert TrialStore(tmp_path, INFO).trials["t1"].wall_seconds == 22


# Kill points of the stress test (record.py, TUNE_ADAPTER_KILL_AFTER): "4s" crashes the
# driver after Tune deleted a checkpoint that its snapshot on storage still names, while
# screened trials wait at the finals rung. The suite kills here (and test_study.py kills
# two runs of one experiment); `tune-adapter bench --faults` at 15 moments, repeated
# kills included.
QUICK_KILLS = [("4s",)]


@pytest.fixture(scope="module")
def fault_search(tmp_path_factory, synth_small):
    from tune_adapter.bench.faults import FaultSearch

    return FaultSearch(space=TINY, train=synth_small["train"], val=synth_small["val"],
                       storage=tmp_path_factory.mktemp("faults"), num_samples=4, max_epochs=3)


def check_survived(search, kills):
    from tune_adapter.bench.faults import run_kill_point

    outcome = run_kill_point(search, kills)
    assert outcome.killed == len(kills), f"the search ended before its kill point: {outcome}"
    # Every trial once, none lost as `error`, no epoch twice, and the resumed search ran to its end.
    assert outcome.ok(search), outcome


@pytest.mark.slow
@pytest.mark.parametrize("kills", QUICK_KILLS, ids="-".join)
def test_a_search_killed_and_resumed_keeps_every_trial_once(fault_search, kills):
    check_survived(fault_search, kills)


def test_bench_faults_prints_a_row_per_kill_point_and_fails_when_one_failed(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tune_adapter.cli import app
    from tune_adapter.bench import faults as fault_bench

    search = fault_bench.FaultSearch(TINY, tmp_path, tmp_path, tmp_path / "runs")
    good = fault_bench.KillOutcome(("4s",), killed=1, exit_code=0, trials=6, statuses={"completed": 6},
                                   finalists=1, best_at_rung=True)
    # Finalists trained to the end, but not the best one at the rung.
    wrong = fault_bench.KillOutcome(("3",), killed=1, exit_code=0, trials=6, statuses={"completed": 6},
                                    finalists=1, best_at_rung=False)
    lost = fault_bench.KillOutcome(("2", "6s"), killed=2, exit_code=0, trials=6,
                                   statuses={"completed": 5, "error": 1}, errors=["ValueError: gone"])
    # Every trial once, but no trial besides the baseline trained to the end.
    starved = fault_bench.KillOutcome(("12s",), killed=1, exit_code=0, trials=6,
                                      statuses={"completed": 1, "pruned": 5}, finalists=0)
    assert good.ok(search) and not lost.ok(search) and not starved.ok(search) and not wrong.ok(search)
    monkeypatch.setattr(fault_bench, "bench_faults", lambda *a, **k: (search, [good, lost, starved, wrong]))
    result = CliRunner().invoke(app, ["bench", "--faults", "--work-dir", str(tmp_path)], env={"COLUMNS": "160"})
    assert result.exit_code == 1, result.output
    assert "4s" in result.output and "2 > 6s" in result.output and "FAILED" in result.output
    assert "kill after 2 > 6s: ValueError: gone" in result.output
    assert "kill after 12s: 0 of 1 finalists trained to the end" in result.output
    assert "kill after 3: a finalist is not among the best at the finals rung" in result.output


def tune_trial(tmp_path, checkpoints: dict[int, float]):
    """A Ray Tune trial (not started) that registered a checkpoint folder per index, as a
    resumed search's snapshot has it: {index: val_l1}, epoch = index + 1."""
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint, CheckpointConfig
    from ray.tune.experiment import Trial

    from tune_adapter.search.storage import linking_filesystem

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp",
                             storage_filesystem=linking_filesystem())
    trial = Trial("fake", config={}, storage=storage, stub=True, checkpoint_config=CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="val_l1", checkpoint_score_order="min"))
    trial.storage.trial_dir_name = "trial_x"
    for index, val_l1 in checkpoints.items():
        folder = Path(trial.storage.trial_fs_path, f"checkpoint_{index:06d}")
        folder.mkdir(parents=True)
        trial.on_checkpoint(_TrainingResult(Checkpoint(str(folder), filesystem=linking_filesystem()),
                                            {"val_l1": val_l1, "epoch": index + 1}))
    return trial


def test_a_resumed_trial_whose_checkpoint_is_gone_restores_from_the_newest_recorded_one(tmp_path):
    from tune_adapter.records.results import TrialRecord
    from tune_adapter.search.recover import repair_checkpoint, skip_stored_checkpoints

    trial = tune_trial(tmp_path, {0: 0.5})
    trial_dir = Path(trial.storage.trial_fs_path)
    shutil.rmtree(trial_dir / "checkpoint_000000")  # registered, then deleted before the snapshot
    for index in (1, 2):  # persisted after the snapshot; the store names both
        (trial_dir / f"checkpoint_{index:06d}").mkdir()
    record = TrialRecord("x", {}, epochs={e: dict(METRICS) for e in (1, 2, 3)},
                         checkpoints={2: str(trial_dir / "checkpoint_000001"), 3: str(trial_dir / "checkpoint_000002")})
    assert repair_checkpoint(trial, record) == "newer"
    assert trial.checkpoint.path == str(trial_dir / "checkpoint_000002")
    assert trial.latest_checkpoint_result.metrics["epoch"] == 3
    skip_stored_checkpoints(trial)
    assert trial.storage.current_checkpoint_index == 2  # Tune's next checkpoint: checkpoint_000003


def test_a_resumed_trial_with_no_checkpoint_left_starts_from_scratch(tmp_path):
    from tune_adapter.search.recover import repair_checkpoint

    trial = tune_trial(tmp_path, {0: 0.5})
    shutil.rmtree(Path(trial.storage.trial_fs_path, "checkpoint_000000"))
    assert repair_checkpoint(trial, None) == "scratch"
    assert trial.checkpoint is None


def test_a_resumed_trial_whose_checkpoints_are_all_there_is_left_alone(tmp_path):
    from tune_adapter.records.results import TrialRecord
    from tune_adapter.search.recover import repair_checkpoint

    trial = tune_trial(tmp_path, {0: 0.5, 1: 0.4})
    newest = str(Path(trial.storage.trial_fs_path, "checkpoint_000001"))
    record = TrialRecord("x", {}, epochs={1: dict(METRICS), 2: dict(METRICS)}, checkpoints={2: newest})
    manager = trial.run_metadata.checkpoint_manager
    assert repair_checkpoint(trial, record) is None
    assert trial.run_metadata.checkpoint_manager is manager and trial.checkpoint.path == newest


def test_trials_a_resumed_tune_never_knew_are_dropped_with_their_checkpoints(tmp_path):
    """They started after Tune's last snapshot: Tune runs a new trial in the place of each,
    finished or not (a finished one kept would make the search one trial longer)."""
    from tune_adapter.search.record import StoreCallback

    store = store_with(tmp_path, ["a", "lost", "b", "c"])
    store.record_end("b", {"lr": 1e-3}, "completed")  # finished after the snapshot
    store.record_end("c", {"lr": 1e-3}, "completed")  # finished before it: Tune knows it
    lost_checkpoint = tmp_path / "trial_lost" / "checkpoint_000000"
    lost_checkpoint.mkdir(parents=True)
    store.record_checkpoint("lost", 1, str(lost_checkpoint))
    callback = StoreCallback(tmp_path, INFO)
    callback.setup()
    callback.on_step_begin(0, [SimpleNamespace(trial_id=t, status=s, PENDING="PENDING", ERROR="ERROR", config={})
                               for t, s in (("a", "RUNNING"), ("c", "TERMINATED"))])
    trials = TrialStore(tmp_path, INFO).trials
    assert set(trials) == {"a", "c"}
    assert sorted(r.number for r in trials.values()) == [0, 1]
    assert not (tmp_path / "trial_lost").exists()


def test_a_trial_tune_ended_in_error_without_telling_the_callbacks_is_recorded(tmp_path):
    """A reused actor that fails to reset ends its new trial ERROR, and Tune calls no
    callback: the trial would stay out of the store, its study trial running."""
    from types import SimpleNamespace

    from tune_adapter.search.record import record_silent_errors

    store = store_with(tmp_path, ["a"])
    store.record_end("a", {"lr": 1e-3}, "completed")
    failed = SimpleNamespace(error=RuntimeError("Traceback ...\nTrainable runner reuse requires reset_config()"),
                             config={"lr": 3e-3})
    failed.path = "/x/trial_b"
    record_silent_errors(store, [SimpleNamespace(error=None, config={}, path="/x/trial_a"), failed])
    trials = TrialStore(tmp_path, INFO).trials
    assert trials["a"].status == "completed"
    assert trials["b"].status == "error" and trials["b"].params == {"lr": 3e-3}
    assert trials["b"].error == "Trainable runner reuse requires reset_config()"
