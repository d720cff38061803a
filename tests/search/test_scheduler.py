"""The search's scheduler: ASHA below the finals rung; every trial that reaches it ends there."""

import pytest
from ray.tune.schedulers import TrialScheduler

from tune_adapter.search.scheduler import BASELINE_KEY, FINALS_OF, SearchScheduler, finals_rung, record_id

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@pytest.mark.parametrize("grace, rf, max_epochs, finals", [
    (1, 3, 10, 3),  # ASHA's rungs 1, 3, 9: from 3 a finalist trains 7 more epochs
    (1, 2, 3, 1), (1, 2, 4, 2), (2, 3, 10, 2), (1, 3, 9, 3),
    (3, 3, 3, None), (1, 4, 3, None),  # no rung below the end: nothing to choose
])
def test_the_finals_rung_is_the_last_whose_next_rung_fits(grace, rf, max_epochs, finals):
    assert finals_rung(grace, rf, max_epochs) == finals


class FakeTrial:
    def __init__(self, trial_id, **config):
        self.trial_id, self.config = trial_id, config


def scheduler(max_epochs=10, finals=True):
    sched = SearchScheduler(finals=finals_rung(1, 3, max_epochs) if finals else None, max_epochs=max_epochs,
                            metric="val_l1", mode="min", grace_period=1, reduction_factor=3)
    assert sched.set_search_properties(None, None)
    return sched


def report(sched, trial, epoch, value):
    return sched.on_trial_result(None, trial, {"epoch": epoch, "val_l1": value})


def added(sched, *trials):
    for trial in trials:
        sched.on_trial_add(None, trial)
    return trials


def test_below_the_rung_it_is_asha_and_at_the_rung_every_trial_ends_screened():
    sched = scheduler()
    a, b, c = added(sched, FakeTrial("a"), FakeTrial("b"), FakeTrial("c"))
    assert report(sched, a, 1, 0.3) == CONTINUE  # the first arrival at rung 1: nothing to compare
    assert report(sched, b, 1, 0.5) == STOP  # below the cutoff of rung 1
    assert report(sched, c, 1, 0.2) == CONTINUE
    assert report(sched, a, 2, 0.3) == CONTINUE
    # Rung 3 is the finals rung: each trial that reaches it ends there, the best one too.
    assert report(sched, a, 3, 0.9) == STOP and report(sched, c, 3, 0.1) == STOP


def test_the_baseline_trains_all_epochs_and_its_values_set_asha_s_cutoffs():
    sched = scheduler()
    base, worse = added(sched, FakeTrial("base", **{BASELINE_KEY: True}), FakeTrial("worse"))
    for epoch in range(1, 11):
        assert report(sched, base, epoch, 0.1) == CONTINUE
    assert report(sched, worse, 1, 0.9) == STOP  # compared with the baseline's value at rung 1


def test_a_finalist_trains_to_the_end_whatever_its_values():
    sched = scheduler()
    (finalist,) = added(sched, FakeTrial("f", **{FINALS_OF: "a"}))
    assert record_id(finalist) == "a"
    assert all(report(sched, finalist, epoch, 9.0) == CONTINUE for epoch in range(4, 11))
    sched.on_trial_complete(None, finalist, {"epoch": 10, "val_l1": 9.0})


def test_without_a_finals_rung_it_is_asha_that_keeps_the_baseline():
    sched = scheduler(finals=False)
    good, base, worse = added(sched, FakeTrial("good"), FakeTrial("base", **{BASELINE_KEY: True}), FakeTrial("worse"))
    assert report(sched, good, 1, 0.1) == CONTINUE
    assert report(sched, worse, 1, 0.9) == STOP
    assert report(sched, base, 1, 0.9) == CONTINUE
    assert report(sched, good, 3, 0.05) == CONTINUE  # no finals: ASHA's top rung lets it on


@pytest.mark.slow
def test_a_search_trains_only_the_best_screened_trial_to_the_end(tmp_path, synth_small, local_ray):
    from tune_adapter.records.results import read_epochs, read_trials
    from tune_adapter.search import SearchOptions, run_search
    from tune_adapter.search.study import mismatches
    from tune_adapter.space import SHIPPED_DIR

    # tiny: 3 epochs, grace 1, rf 2: the finals rung is epoch 1.
    options = SearchOptions(space=SHIPPED_DIR / "tiny.py", manifest=synth_small["train"],
                            val_manifest=synth_small["val"], num_samples=6, max_epochs=3, grace_period=1,
                            reduction_factor=2, storage=tmp_path, name="finals", quiet=True, seed=0)
    folder = run_search(options).experiment_dir
    trials, epochs = read_trials(folder), read_epochs(folder)
    screened = trials[~trials["baseline"]]
    assert len(screened) == 5 and (screened["status"] == "completed").sum() == 1
    assert sorted(screened["epochs"]) == [1, 1, 1, 1, 3]
    at_rung = epochs[(epochs["epoch"] == 1) & epochs["trial_id"].isin(screened["trial_id"])]
    finalist = screened.loc[screened["status"] == "completed", "trial_id"].item()
    assert finalist == at_rung.loc[at_rung["val_l1"].idxmin(), "trial_id"]
    assert trials.loc[trials["baseline"], "epochs"].item() == 3
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and mismatches(folder, "finals") == []
    # The finalist went on from its screened trial's checkpoint at the rung: its epoch 2
    # starts where epoch 1 ended (steps count on).
    mine = epochs[epochs["trial_id"] == finalist].set_index("epoch")
    assert mine.loc[2, "step"] == 2 * mine.loc[1, "step"]
