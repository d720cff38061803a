"""The search's scheduler: ASHA below the finals rung, finalists chosen once all are screened."""

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from tune_adapter.search import budget
from tune_adapter.search import scheduler as scheduler_module
from tune_adapter.search.scheduler import BASELINE_KEY
from tune_adapter.search.scheduler import SearchScheduler, finals_rung

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


@pytest.mark.parametrize("grace, rf, max_epochs, finals", [
    (1, 3, 10, 3),  # ASHA's rungs 1, 3, 9: from 3 a finalist trains 7 more epochs
    (1, 2, 3, 1), (1, 2, 4, 2), (2, 3, 10, 2), (1, 3, 9, 3),
    (3, 3, 3, None), (1, 4, 3, None),  # no rung below the end: nothing to choose
])
def test_the_finals_rung_is_the_last_whose_next_rung_fits(grace, rf, max_epochs, finals):
    assert finals_rung(grace, rf, max_epochs) == finals


class FakeTrial:
    def __init__(self, trial_id, baseline=False):
        self.trial_id, self.status, self.last_result = trial_id, Trial.RUNNING, {}
        self.config = {BASELINE_KEY: True} if baseline else {}

    def is_finished(self):
        return self.status in (Trial.TERMINATED, Trial.ERROR)


class FakeController:
    def __init__(self, trials):
        self.trials, self.stopped = trials, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = Trial.TERMINATED
        self.stopped.append(trial.trial_id)


def scheduler(trials=4, finalists=1, max_epochs=10):
    return SearchScheduler(trials=trials, finals=finals_rung(1, 3, max_epochs), finalists=finalists,
                           time_attr="epoch", metric="val_l1", mode="min", max_t=max_epochs,
                           grace_period=1, reduction_factor=3)


def report(sched, controller, trial, epoch, value):
    trial.last_result = {"epoch": epoch, "val_l1": value}
    action = sched.on_trial_result(controller, trial, trial.last_result)
    trial.status = {PAUSE: Trial.PAUSED, STOP: Trial.TERMINATED}.get(action, Trial.RUNNING)
    return action


def screened(values: dict, baseline=True, **kw):
    """Trials that each report epochs 1..3 with the same value, one after the other."""
    trials = {name: FakeTrial(name) for name in values}
    if baseline:
        trials["base"] = FakeTrial("base", baseline=True)
    sched, controller = scheduler(trials=len(trials), **kw), FakeController(list(trials.values()))
    for trial in trials.values():
        sched.on_trial_add(controller, trial)
    actions = {}
    for name, value in values.items():
        actions[name] = []
        for epoch in (1, 2, 3):
            actions[name].append(report(sched, controller, trials[name], epoch, value))
            if actions[name][-1] == STOP:
                break
    return sched, controller, trials, actions


def test_a_screened_trial_waits_and_the_best_one_goes_on_once_all_are_screened():
    sched, controller, trials, actions = screened({"a": 0.5, "b": 0.3, "c": 0.4})
    assert actions["a"] == [CONTINUE, CONTINUE, PAUSE]  # the first arrival: nothing to compare
    assert actions["b"][-1] == PAUSE
    # The baseline is still training: it is not screened, so the choice does not wait for it.
    assert report(sched, controller, trials["base"], 3, 0.9) == CONTINUE
    waiting = [t for t in trials.values() if t.status == Trial.PAUSED]
    assert sched.choose_trial_to_run(controller) is trials["b"]
    assert sched.chosen == {"b"}
    assert sorted(controller.stopped) == sorted(t.trial_id for t in waiting if t.trial_id != "b")
    trials["b"].status = Trial.RUNNING
    # Past the finals rung a finalist trains to the end: ASHA's top rung does not stop it.
    assert report(sched, controller, trials["b"], 9, 0.95) == CONTINUE
    assert report(sched, controller, trials["b"], 10, 0.2) == STOP


def test_nothing_is_chosen_while_a_trial_is_unscreened_or_not_yet_created():
    sched, controller, trials, _ = screened({"a": 0.5, "b": 0.3})
    late = FakeTrial("late")
    controller.trials.append(late)
    sched.on_trial_add(controller, late)
    report(sched, controller, late, 1, 0.1)
    assert sched.choose_trial_to_run(controller) is None and sched.chosen is None
    report(sched, controller, late, 2, 0.1)
    assert report(sched, controller, late, 3, 0.1) == PAUSE
    sched.trials = len(controller.trials) + 1  # one more trial to come: still no choice
    assert sched.choose_trial_to_run(controller) is None and sched.chosen is None
    sched.trials -= 1
    assert sched.choose_trial_to_run(controller) is late


def test_a_pending_trial_is_started_before_any_choice():
    sched, controller, trials, _ = screened({"a": 0.5})
    fresh = FakeTrial("fresh")
    fresh.status = Trial.PENDING
    controller.trials.append(fresh)
    assert sched.choose_trial_to_run(controller) is fresh and sched.chosen is None


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # ASHA's cutoff over the NaN alone
def test_a_diverged_trial_is_never_a_finalist():
    sched, controller, trials, actions = screened({"nan": float("nan"), "a": 0.5}, baseline=False)
    assert actions["nan"][-1] == PAUSE  # ASHA lets a NaN through; the choice does not
    assert sched.choose_trial_to_run(controller) is trials["a"] and controller.stopped == ["nan"]


def test_two_finalists_and_trials_asha_stopped_before_the_rung():
    sched, controller, trials, actions = screened({"a": 0.5, "b": 0.3, "c": 0.4, "d": 0.35}, finalists=2)
    assert actions["c"] == [STOP]  # below rung 1's cutoff (0.5 and 0.3 before it)
    assert {t.trial_id for t in trials.values() if t.status == Trial.PAUSED} == {"a", "b", "d"}
    sched.choose_trial_to_run(controller)
    assert sched.chosen == {"b", "d"} and controller.stopped == ["a"]


def test_after_a_resume_trials_at_or_past_the_rung_wait_and_an_ended_finalist_keeps_its_place():
    """Tune restores paused and running trials as PENDING, and the scheduler starts empty."""
    sched = scheduler(trials=4)
    waiting, other, running, fresh = FakeTrial("w"), FakeTrial("o"), FakeTrial("r"), FakeTrial("n")
    for trial, epoch, value in ((waiting, 3, 0.2), (other, 3, 0.3), (running, 5, 0.1), (fresh, 1, 0.5)):
        trial.status, trial.last_result = Trial.PENDING, {"epoch": epoch, "val_l1": value}
    controller = FakeController([waiting, other, running, fresh])
    for trial in controller.trials:
        sched.on_trial_add(controller, trial)
    assert sched.choose_trial_to_run(controller) is fresh  # not screened yet: it runs first
    fresh.status = Trial.RUNNING
    assert sched.choose_trial_to_run(controller) is None
    # Its first result after the resume is past the rung (its rung result was lost): it waits.
    assert report(sched, controller, fresh, 4, 0.4) == PAUSE
    # The finalist before the crash (its value, 5 epochs in, is the best) is chosen again.
    assert sched.choose_trial_to_run(controller) is running
    assert sched.chosen == {"r"} and sorted(controller.stopped) == ["n", "o", "w"]

    sched = scheduler(trials=3)
    ended, stopped, waiting = FakeTrial("e"), FakeTrial("s"), FakeTrial("w")
    ended.status, ended.last_result = Trial.TERMINATED, {"epoch": 10, "val_l1": 0.3}
    waiting.status, waiting.last_result = Trial.PENDING, {"epoch": 3, "val_l1": 0.2}
    # Stopped by ASHA past the rung (resumed there, its rung result lost): not a finalist.
    stopped.status, stopped.last_result = Trial.TERMINATED, {"epoch": 4, "val_l1": 0.9}
    controller = FakeController([ended, stopped, waiting])
    sched.on_trial_add(controller, waiting)
    assert sched.choose_trial_to_run(controller) is None
    assert sched.chosen == {"e"} and controller.stopped == ["w"]

    ended.last_result = {"epoch": 4, "val_l1": 0.3}  # ended short of the end: no finalist yet
    waiting.status = Trial.PENDING
    sched, controller = scheduler(trials=3), FakeController([ended, stopped, waiting])
    sched.on_trial_add(controller, waiting)
    assert sched.choose_trial_to_run(controller) is waiting and sched.chosen == {"w"}


def test_once_the_time_budget_is_spent_the_waiting_trials_end_as_stopped():
    sched, controller, trials, _ = screened({"a": 0.5, "b": 0.3}, baseline=False)
    with budget.running_clock(budget_s=1.0, spent_before=2.0):
        assert sched.choose_trial_to_run(controller) is None
        assert sched.chosen == set() and sorted(controller.stopped) == ["a", "b"]
        assert all(budget.stopped_by_budget(t) for t in ("a", "b"))


def test_without_finalists_it_is_asha_that_keeps_the_baseline():
    sched = SearchScheduler(trials=3, finals=None, finalists=0, time_attr="epoch", metric="val_l1",
                            mode="min", max_t=10, grace_period=1, reduction_factor=3)
    controller = FakeController([])
    good, base, worse = FakeTrial("good"), FakeTrial("base", baseline=True), FakeTrial("worse")
    for trial in (good, base, worse):
        sched.on_trial_add(controller, trial)
    assert report(sched, controller, good, 1, 0.1) == CONTINUE
    assert report(sched, controller, worse, 1, 0.9) == STOP
    assert report(sched, controller, base, 1, 0.9) == CONTINUE
    assert report(sched, controller, good, 3, 0.05) == CONTINUE  # no waiting


def test_a_waiting_trial_holds_no_slot_of_the_searchers_concurrency_limit():
    from tune_adapter.search.optuna_pruned import PrunedAwareOptunaSearch
    from tune_adapter.space import SHIPPED_DIR, load_space

    space = load_space(SHIPPED_DIR / "tiny.py")
    searcher = PrunedAwareOptunaSearch(space=space.function, metric="val_l1", mode="min", max_epochs=3,
                                       baseline=space.baseline)
    assert searcher.set_max_concurrency(2)  # Tune's ConcurrencyLimiter leaves the limit to it
    assert searcher.suggest("base") and searcher.suggest("a")
    assert searcher.suggest("b") is None  # two running
    scheduler_module.WAITING.add("a")  # paused at the finals rung
    assert searcher.suggest("b") is not None and searcher.suggest("c") is None
    scheduler_module.WAITING.discard("a")  # chosen: running again
    searcher.on_trial_complete("b", {"epoch": 1, "val_l1": 0.6})  # pruned
    assert searcher.suggest("c") is None  # the baseline and the finalist
    searcher.on_trial_complete("a", {"epoch": 3, "val_l1": 0.3})
    assert searcher.suggest("c") is not None


@pytest.mark.slow
def test_a_search_trains_only_the_best_screened_trial_to_the_end(tmp_path, synth_small, local_ray):
    from tune_adapter.results import read_epochs, read_trials
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
