"""The driver's checks and endings, without Ray: ray:// refused, a moved experiment refused,
Tune's own stop line kept out, and when a run of the search is over."""

import logging
from pathlib import Path

import pytest

from tune_adapter.errors import ConfigError
from tune_adapter.records.results import WAITING, ExperimentInfo, TrialStore
from tune_adapter.search import SearchOptions
from tune_adapter.search.driver import check_address, check_not_moved, experiment_place, fit_quietly
from tune_adapter.search.record import end_waiting, run_over
from tune_adapter.space import SHIPPED_DIR


def test_ray_client_addresses_are_refused_in_one_line():
    check_address(None)
    check_address("10.0.0.1:6379")
    with pytest.raises(ConfigError, match=r"--address ray://head:10001: Ray Client .* --address HEAD_IP:6379"):
        check_address("ray://head:10001")


def test_a_moved_experiment_is_refused_on_resume(tmp_path):
    def options(folder: Path, resume: bool) -> SearchOptions:
        return SearchOptions(space=SHIPPED_DIR / "tiny.py", storage=folder, name="moved", resume=resume)

    begun = options(tmp_path / "old", resume=False)
    info = ExperimentInfo(name="moved", params=["lr"], extra={"experiment": experiment_place(begun)})
    TrialStore(begun.experiment_dir, info).write()
    (tmp_path / "old").rename(tmp_path / "new")
    resumed = options(tmp_path / "new", resume=True)
    here = ExperimentInfo(name="moved", params=["lr"], extra={"experiment": experiment_place(resumed)})
    with pytest.raises(ConfigError, match=r"--resume: moved was begun in .*/old/moved .* move it back"):
        check_not_moved(resumed, here)
    check_not_moved(options(tmp_path / "new", resume=False), here)  # a new search there: fine
    # Killed before its first result: nothing recorded, nothing to compare.
    check_not_moved(options(tmp_path / "empty", resume=True), here)


def test_tunes_line_about_unfinished_trials_is_kept_out(caplog):
    class Tuner:
        def fit(self):
            logging.getLogger("ray.tune.tune").error("Trials did not complete: [t1, t2]")
            return "results"

    with caplog.at_level(logging.INFO):
        assert fit_quietly(Tuner()) == "results"
    assert "Trials did not complete" not in caplog.text
    assert logging.getLogger("ray.tune.tune").level == logging.NOTSET  # as it was


def store_with(folder, statuses: dict, num_samples: int, finalists: int = 1) -> TrialStore:
    info = ExperimentInfo(name="x", params=["lr"], max_epochs=3, num_samples=num_samples,
                          extra={"run_starts": [0], "search": {"finalists": finalists}})
    store = TrialStore(folder, info)
    for trial_id, status in statuses.items():
        store.record_epoch(trial_id, {"lr": 1e-3}, {"epoch": 1, "val_l1": 0.5}, 1.0,
                           baseline=trial_id == "base")
        if status != "running":
            store.record_end(trial_id, {"lr": 1e-3}, status)
    return store


def test_a_run_is_over_once_its_finals_are(tmp_path):
    known = {"base", "a", "b", "c"}
    screened = {"base": "completed", "a": WAITING, "b": WAITING, "c": "pruned"}
    # Every trial screened, no finalist yet (stopped between screening and finals): not over.
    assert not run_over(store_with(tmp_path / "1", screened, 4), False, known)
    # The finalist trains: not over.
    assert not run_over(store_with(tmp_path / "2", {**screened, "a": "running"}, 4), False, known)
    done = store_with(tmp_path / "3", {**screened, "a": "completed"}, 4)
    assert run_over(done, False, known)
    end_waiting(done, budget_spent=False)
    assert done.trials["b"].status == "pruned"
    # A trial still to come: not over, unless the budget ended the run.
    assert not run_over(store_with(tmp_path / "4", {**screened, "a": "completed"}, 5), False, known)
    spent = store_with(tmp_path / "5", screened, 5)
    assert run_over(spent, True, known)
    end_waiting(spent, budget_spent=True)
    assert spent.trials["a"].status == "stopped"
