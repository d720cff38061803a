"""The searcher: Optuna's ask-and-tell, the finalists, the limit on trials at once, Tune's snapshots."""

import math

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tune_adapter.search.budget import SearchClock
from tune_adapter.search.finals import Finals
from tune_adapter.search.scheduler import BASELINE_KEY, CPUS_KEY, FINALS_OF
from tune_adapter.search.searcher import SilentErrors, StudySearcher
from tune_adapter.search.study import open_study
from tune_adapter.space import SHIPPED_DIR, load_space

SPACE = load_space(SHIPPED_DIR / "tiny.py")


def searcher(folder, trials=4, rung=None, finalists=0, baseline=False, max_epochs=3, clock=None):
    study = open_study(folder, "s")
    if baseline:
        study.enqueue_trial(SPACE.baseline, user_attrs={BASELINE_KEY: True})
    return StudySearcher(folder=folder, study_name="s", space_fn=SPACE.function,
                         sampler=optuna.samplers.RandomSampler(seed=0), trials=trials, max_epochs=max_epochs,
                         finals=Finals(rung, finalists), clock=clock or SearchClock())


def run(s, trial_id, curve, error=False):
    """The trial's epochs as Tune reports them: the last result reaches on_trial_complete only."""
    results = [{"val_l1": v, "epoch": e} for e, v in enumerate(curve, 1)]
    for result in results[:-1]:
        s.on_trial_result(trial_id, result)
    s.on_trial_complete(trial_id, results[-1] if results else None, error=error)


def state_of(s, trial_id):
    return s.study_trial(trial_id).state


def test_every_epoch_reaches_optuna_and_stopped_trials_are_pruned(tmp_path):
    s = searcher(tmp_path)
    curves = {"a": [0.9], "b": [0.8, 0.5, 0.6], "c": [0.7, 0.65]}
    for trial_id, curve in curves.items():
        assert s.suggest(trial_id) is not None
        run(s, trial_id, curve)
    s.suggest("d")
    run(s, "d", [], error=True)
    assert [state_of(s, t) for t in "abcd"] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED,
                                                TrialState.FAIL]
    for trial_id, curve in curves.items():
        assert s.study_trial(trial_id).intermediate_values == dict(enumerate(curve, 1))
    assert s.study_trial("b").value == pytest.approx(0.5)  # a completed trial's best epoch, not its last
    assert s.suggest("e") is Searcher.FINISHED  # all 4 handed out, no finals


def test_the_baseline_is_the_first_trial(tmp_path):
    s = searcher(tmp_path, baseline=True)
    first, second = s.suggest("a"), s.suggest("b")
    assert first[BASELINE_KEY] is True and BASELINE_KEY not in second
    assert {k: first[k] for k in SPACE.baseline} == SPACE.baseline


def screen(s, values: dict):
    for trial_id in values:
        assert s.suggest(trial_id) is not None
    for trial_id, value in values.items():
        run(s, trial_id, [0.9, value])  # rung 2


def test_the_best_at_the_rung_continues_and_a_failed_finalist_hands_its_place_on(tmp_path):
    s = searcher(tmp_path, trials=4, rung=2, finalists=1, max_epochs=4)
    assert s.suggest("a") and s.suggest("b") and s.suggest("c")
    run(s, "a", [0.9, 0.3])
    run(s, "b", [0.9, 0.2])
    assert s.suggest("d") is not None
    assert s.suggest("f1") is None  # c and d are not screened yet
    run(s, "c", [0.8])  # stopped below the rung: pruned
    run(s, "d", [0.9, float("nan")])  # diverged at the rung: ranks last
    assert state_of(s, "a") == TrialState.RUNNING and state_of(s, "c") == TrialState.PRUNED
    finalist = s.suggest("f1")
    assert finalist[FINALS_OF] == "b" and {k: finalist[k] for k in s.configs["b"]} == s.configs["b"]
    assert s.suggest("f2") is None  # one finalist at a time
    run(s, "f1", [], error=True)  # out of memory, say: "a", the next best, takes its place
    assert state_of(s, "b") == TrialState.FAIL
    assert s.suggest("f2")[FINALS_OF] == "a"
    s.on_trial_result("f2", {"epoch": 3, "val_l1": 0.25})
    s.on_trial_complete("f2", {"epoch": 4, "val_l1": 0.15})
    assert s.suggest("f3") is Searcher.FINISHED
    assert state_of(s, "a") == TrialState.COMPLETE and s.study_trial("a").value == pytest.approx(0.15)
    assert s.study_trial("a").intermediate_values == {1: 0.9, 2: 0.3, 3: 0.25, 4: 0.15}
    assert state_of(s, "d") == TrialState.PRUNED  # a runner-up no finalist needed


def test_the_limit_on_trials_at_once_counts_finalists_and_frees_a_silently_failed_trial(tmp_path):
    s = searcher(tmp_path, trials=3, rung=2, finalists=2)
    s.set_max_concurrency(2)
    assert s.suggest("a") and s.suggest("b") and s.suggest("c") is None
    run(s, "a", [0.9, 0.3])
    assert s.suggest("c") is not None and s.suggest("x") is None

    class Errored:  # a trial Tune ended without telling the searcher (a failed actor reset)
        trial_id, status, ERROR, last_result = "b", "ERROR", "ERROR", {"epoch": 1, "val_l1": 0.5}

    SilentErrors(s).on_step_begin(0, [Errored()])
    assert state_of(s, "b") == TrialState.FAIL and "b" not in s.running
    run(s, "c", [0.9, 0.2])
    assert s.suggest("f1")[FINALS_OF] == "c" and s.suggest("f2")[FINALS_OF] == "a"
    assert s.suggest("f3") is None  # two finalists: the limit


def test_a_restored_searcher_goes_on_from_its_snapshot_and_shares_the_clock_again(tmp_path):
    import pickle

    clock = SearchClock(budget_s=100.0)
    s = searcher(tmp_path, trials=4, rung=2, finalists=1, clock=clock)
    s.set_max_concurrency(2)
    screen(s, {"a": 0.4, "b": 0.2})
    assert s.suggest("d") is not None  # running at the snapshot
    s.save(str(tmp_path / "snapshot.pkl"))
    s.suggest("c")  # after the snapshot: an orphan in the study once the driver dies

    built = pickle.loads(pickle.dumps((s, clock)))  # as Tune pickles the experiment (tuner.pkl)
    restored, restored_clock = built
    restored.restore(str(tmp_path / "snapshot.pkl"))
    assert restored.clock is restored_clock and restored.finals.values == {"a": 0.4, "b": 0.2}
    again = restored.suggest("c2")  # the orphan's configuration, not a new study trial
    assert restored.numbers["c2"] == s.numbers["c"] and again == s.configs["c"]
    assert len(open_study(tmp_path, "s").trials) == 4
    assert restored.suggest("e") is None  # d and c2 run: --max-concurrent 2 holds after a restore
    restored_clock.budget_s = 0.0
    assert restored.suggest("f") is Searcher.FINISHED


def test_a_long_finalist_gets_the_free_cpus_and_a_short_one_keeps_its_actor(tmp_path):
    s = searcher(tmp_path, trials=2, rung=2, finalists=2, max_epochs=10)
    s.finalist_cpus = 2.0
    assert s.suggest("a") and s.suggest("b")
    for trial_id, seconds in (("a", 0.5), ("b", 9.0)):  # 8 epochs left: 4 s and 72 s
        s.on_trial_result(trial_id, {"epoch": 1, "val_l1": 0.9, "epoch_seconds": seconds})
        s.on_trial_complete(trial_id, {"epoch": 2, "val_l1": 0.3 if trial_id == "a" else 0.4,
                                       "epoch_seconds": seconds})
    short, long = s.suggest("f1"), s.suggest("f2")
    assert short[FINALS_OF] == "a" and CPUS_KEY not in short
    assert long[FINALS_OF] == "b" and long[CPUS_KEY] == 2.0


def test_finals_rank_by_value_at_the_rung_with_nan_last_and_ties_by_id():
    finals = Finals(rung=3, finalists=2)
    for trial_id, value in (("c", 0.2), ("a", math.nan), ("b", 0.2), ("d", 0.1)):
        finals.screened(trial_id, value, {})
    assert finals.ranked() == ["d", "b", "c", "a"]
    finals.start("f1", finals.next())
    finals.start("f2", finals.next())
    assert finals.next() is None and finals.running() == {"d", "b"}
    finals.end("f1", completed=False)
    assert finals.next() == "c"
