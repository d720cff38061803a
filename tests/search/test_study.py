"""The study on disk: the journal, --continue, --warm-start, --time-budget."""

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, distribution_to_json
from optuna.trial import TrialState

from tests.search.test_search import TINY, options
from tune_adapter.errors import ConfigError
from tune_adapter.records.results import ExperimentInfo, read_trials
from tune_adapter.search import run_search
from tune_adapter.search.budget import FAKE_SECONDS_ENV, SPENT_KEY
from tune_adapter.search.options import parse_duration
from tune_adapter.search.study import (
    JOURNAL_FILE, TUNE_ID_ATTR, WARM_START_ATTR, check_earlier_trials, journal_storage, mismatches, tune_trials,
)

# The module's searches share one local Ray (conftest.local_ray).
pytestmark = pytest.mark.usefixtures("local_ray")


def load_study(folder, name="tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal_storage(folder))


def assert_study_matches_store(folder, name="tiny") -> None:
    """One study trial per trials.parquet row, in the row's state, with its epochs' values."""
    assert mismatches(folder, name) == []
    trials, by_id = read_trials(folder), tune_trials(load_study(folder, name))
    for row in trials[trials["status"] == "completed"].to_dict("records"):
        assert by_id[row["trial_id"]].value == pytest.approx(row["best_val_l1"])


def configurations(trials) -> list[tuple]:
    return [tuple(row) for row in trials[["lr", "batch_size", "audio_window"]].itertuples(index=False)]


@pytest.mark.slow
def test_a_search_continued_adds_trials_that_learn_from_the_earlier_ones(tmp_path, synth_small):
    first = run_search(options(tmp_path, synth_small, num_samples=5))
    folder = first.experiment_dir
    before = read_trials(folder)
    assert (folder / JOURNAL_FILE).is_file()
    assert_study_matches_store(folder)

    outcome = run_search(options(tmp_path, synth_small, num_samples=9, continue_search=True))
    assert outcome.complete and outcome.finished == 4 and outcome.held == 9
    trials = read_trials(folder)
    assert len(trials) == 9 and trials["trial_id"].is_unique
    pd.testing.assert_frame_equal(trials.iloc[:5].reset_index(drop=True), before)
    assert len(set(configurations(trials))) == 9
    assert trials["baseline"].sum() == 1  # the first run's; a continuation runs none
    assert sorted(trials["number"]) == list(range(9))
    study = load_study(folder)
    assert len(study.trials) == 9
    assert all(t.intermediate_values for t in study.trials if t.state == TrialState.PRUNED)
    assert_study_matches_store(folder)

    with pytest.raises(ConfigError, match="already holds 9 trials"):
        run_search(options(tmp_path, synth_small, num_samples=9, continue_search=True))


@pytest.mark.slow
def test_a_warm_started_search_samples_around_the_earlier_trials(tmp_path, synth_small):
    # A finite space of 4 configurations: the earlier search ran 2, so the new one must
    # run the other 2, which only a sampler that sees the earlier trials does every time.
    space = tmp_path / "four.py"
    space.write_text("def space(trial):\n"
                     "    return {'lr': trial.suggest_categorical('lr', [1e-3, 3e-3]),\n"
                     "            'batch_size': trial.suggest_categorical('batch_size', [4, 8]),\n"
                     "            'audio_window': 5, 'intermediate_dim': 32}\n")
    kw = dict(space=space, max_epochs=1, grace_period=1, num_samples=2, baseline=False)
    earlier = run_search(options(tmp_path, synth_small, name="earlier", **kw)).experiment_dir
    later = run_search(options(tmp_path, synth_small, name="later", warm_start=(earlier,), **kw)).experiment_dir
    ran = {tuple(r) for r in read_trials(earlier)[["lr", "batch_size"]].itertuples(index=False)}
    new = {tuple(r) for r in read_trials(later)[["lr", "batch_size"]].itertuples(index=False)}
    assert len(ran) == 2 and len(new) == 2 and not ran & new
    study = load_study(later, "later")
    copied = [t for t in study.trials if WARM_START_ATTR in t.user_attrs]
    assert len(copied) == 2 and all(t.state == TrialState.COMPLETE for t in copied)
    assert {t.user_attrs[TUNE_ID_ATTR] for t in copied} == set(read_trials(earlier)["trial_id"])
    assert_study_matches_store(later, "later")


@pytest.mark.slow
def test_a_time_budget_stops_new_trials_and_carries_over_a_continue(tmp_path, synth_small, monkeypatch):
    # Each result advances the search's clock by 10 minutes (and the wall clock does not
    # count): the 30-minute budget is spent at the third result.
    monkeypatch.setenv(FAKE_SECONDS_ENV, "600")
    kw = dict(num_samples=6, max_epochs=3, max_concurrent=1, baseline=False)
    outcome = run_search(options(tmp_path, synth_small, time_budget=1800, **kw))
    folder = outcome.experiment_dir
    trials = read_trials(folder)
    assert outcome.budget_spent and outcome.complete
    assert len(trials) < 6 and trials["epochs"].sum() == 3
    assert "stopped" in set(trials["status"]) or (trials["status"] == "completed").all()
    info_spent = read_info_extra(folder)[SPENT_KEY]
    assert info_spent == pytest.approx(1800)
    assert_study_matches_store(folder)

    # Continued with a longer budget: the 30 minutes spent count, 20 more give 2 results.
    again = run_search(options(tmp_path, synth_small, time_budget=3000, continue_search=True, **kw))
    later = read_trials(folder)
    assert again.budget_spent and later["epochs"].sum() == 5
    assert read_info_extra(folder)[SPENT_KEY] == pytest.approx(3000)
    assert_study_matches_store(folder)


def read_info_extra(folder) -> dict:
    from tune_adapter.records.results import read_info

    return read_info(folder).extra


def info_with(distributions: dict) -> ExperimentInfo:
    return ExperimentInfo(name="earlier", params=sorted(distributions),
                          distributions={k: distribution_to_json(d) for k, d in distributions.items()})


def test_a_widened_range_is_accepted_and_one_that_drops_earlier_values_is_refused():
    earlier = info_with({"lr": FloatDistribution(1e-4, 1e-2, log=True), "batch_size": CategoricalDistribution([4, 8]),
                         "audio_window": IntDistribution(3, 5, step=2)})
    ran = pd.DataFrame({"lr": [5e-3, 2e-4], "batch_size": [4, 8], "audio_window": [3, 5]})
    wider = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "batch_size": CategoricalDistribution([4, 8]),
             "audio_window": IntDistribution(3, 9, step=2)}
    check_earlier_trials("--continue", earlier, ran, wider, same_study=True)
    narrower = dict(wider, lr=FloatDistribution(1e-3, 1e-1, log=True))
    with pytest.raises(ConfigError, match=r"ran lr = 0.0002, outside .*widen lr"):
        check_earlier_trials("--continue", earlier, ran, narrower, same_study=True)
    more_choices = dict(wider, batch_size=CategoricalDistribution([2, 4, 8]))
    with pytest.raises(ConfigError, match="batch_size's choices changed .*--warm-start"):
        check_earlier_trials("--continue", earlier, ran, more_choices, same_study=True)
    check_earlier_trials("--warm-start x", earlier, ran, more_choices, same_study=False)
    linear = dict(wider, lr=FloatDistribution(1e-5, 1e-1))
    with pytest.raises(ConfigError, match="lr was .* log scale"):
        check_earlier_trials("--continue", earlier, ran, linear, same_study=True)
    with pytest.raises(ConfigError, match="gone: audio_window"):
        check_earlier_trials("--continue", earlier, ran, {k: wider[k] for k in ("lr", "batch_size")}, True)


def test_durations_read_as_seconds():
    assert parse_duration("2h") == 7200 and parse_duration("45m") == 2700
    assert parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(ConfigError, match="--time-budget 'soon' is not a duration"):
        parse_duration("soon")
    from pathlib import Path

    from tune_adapter.search.options import resolve_options

    assert resolve_options({"time_budget": "45m"}, space=Path("s.py")).time_budget == 2700  # TIME_BUDGET
    assert resolve_options({"time_budget": "45m"}, space=Path("s.py"), time_budget="1h").time_budget == 3600


def test_bad_continue_warm_start_and_budget_flags_are_refused_in_one_line(tmp_path, synth_small):
    from typer.testing import CliRunner

    from tune_adapter.cli import app

    base = ["search", "--space", "tiny", "--storage", str(tmp_path / "results"), "--manifest",
            str(synth_small["train"]), "--val-manifest", str(synth_small["val"])]
    cases = {("--name", "none", "--continue"): "--continue: ",
             ("--warm-start", str(tmp_path / "nowhere")): "is not a folder",
             ("--time-budget", "soon"): "--time-budget 'soon' is not a duration"}
    for flags, message in cases.items():
        result = CliRunner().invoke(app, [*base, *flags], env={"COLUMNS": "300"})
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "results" / "none").exists() and not (tmp_path / "results" / "tiny").exists()


@pytest.mark.slow
def test_a_time_budget_and_a_continue_survive_kills(tmp_path, synth_small, monkeypatch):
    from dataclasses import replace

    from tune_adapter.bench.faults import FaultSearch, run_driver
    from tune_adapter.search.driver import prepare_search

    monkeypatch.setenv(FAKE_SECONDS_ENV, "600")
    search = FaultSearch(space=TINY, train=synth_small["train"], val=synth_small["val"], storage=tmp_path,
                         num_samples=6, flags=("--time-budget", "30m", "--max-concurrent", "1", "--no-baseline"))
    # Killed right after the first result's checkpoint is recorded: 10 minutes spent.
    assert run_driver(search, "budget", resume=False, kill_after="2").returncode == -9
    folder = tmp_path / "budget"
    assert read_info_extra(folder)[SPENT_KEY] == 600
    resumed = prepare_search(options(tmp_path, synth_small, storage=tmp_path, name="budget", resume=True))
    assert resumed.budget_s == 1800 and resumed.info.extra[SPENT_KEY] == 600  # the flag left out: as recorded
    done = run_driver(search, "budget", resume=True, kill_after=None)
    assert done.returncode == 0, done.stderr[-2000:]
    # Two more results spend the rest; no trial starts after.
    assert read_info_extra(folder)[SPENT_KEY] == 1800
    before = read_trials(folder)
    assert len(before) < 6 and set(before["status"]) <= {"completed", "pruned", "stopped"}
    assert_study_matches_store(folder, "budget")

    # Continued with 20 minutes more, killed at its first result, before the store writes
    # it, then resumed: the description it saved first says where it began.
    more = replace(search, num_samples=len(before) + 2,
                   flags=("--time-budget", "50m", "--continue", "--max-concurrent", "1"))
    assert run_driver(more, "budget", resume=False, kill_after="1").returncode == -9
    done = run_driver(more, "budget", resume=True, kill_after=None)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_trials(folder)
    pd.testing.assert_frame_equal(after.iloc[:len(before)].reset_index(drop=True), before)
    assert read_info_extra(folder)["run_starts"] == [0, len(before)]
    assert read_info_extra(folder)[SPENT_KEY] == 3000
    assert_study_matches_store(folder, "budget")


def test_a_continue_on_other_data_or_epochs_is_refused():
    from tune_adapter.search.continuation import check_same_task

    data = {"manifest": "/d/train.json", "val_manifest": "/d/val.json", "val_fraction": None}
    earlier = ExperimentInfo(name="default", params=[], max_epochs=10, extra={"search": {"data": data}})
    same = ExperimentInfo(name="default", params=[], max_epochs=10, extra={"search": {"data": dict(data)}})
    check_same_task(earlier, same)
    with pytest.raises(ConfigError, match="--max-epochs 20: default's trials ran up to 10"):
        check_same_task(earlier, ExperimentInfo(name="default", params=[], max_epochs=20, extra=same.extra))
    other = {"search": {"data": dict(data, manifest="/e/train.json")}}
    with pytest.raises(ConfigError, match="--manifest: default was searched on /d/train.json"):
        check_same_task(earlier, ExperimentInfo(name="default", params=[], max_epochs=10, extra=other))
    # A search from before packs had dtypes was packed in float32: a half-precision continue is refused.
    half = {"search": {"data": dict(data, pack_dtype="half")}}
    with pytest.raises(ConfigError, match="--pack-dtype: default was searched on float32, not half"):
        check_same_task(earlier, ExperimentInfo(name="default", params=[], max_epochs=10, extra=half))


def test_reconcile_ends_each_running_study_trial_as_its_row_did(tmp_path):
    """The driver died before the searcher told the study: reconcile tells it from Parquet,
    curves included, through the journal's storage (study.set_intermediate)."""
    from tests.support.fake_experiment import write_fake_experiment
    from tune_adapter.records.results import TrialStore, read_info
    from tune_adapter.search.study import open_study, reconcile

    made = write_fake_experiment(tmp_path, trials=6)
    store = TrialStore(tmp_path, read_info(tmp_path))
    study = open_study(tmp_path, store.info.name)
    for trial_id in [t.trial_id for t in made] + ["ghost"]:  # ghost: asked, never run
        study.ask().set_user_attr(TUNE_ID_ATTR, trial_id)
    reconcile(study, store, complete=True)
    assert mismatches(tmp_path, store.info.name) == ["ghost: in the study, not in trials.parquet"]
    by_id = tune_trials(load_study(tmp_path, store.info.name))
    assert by_id["ghost"].state == TrialState.FAIL
    for fake in made:
        trial = by_id[fake.trial_id]
        if trial.state == TrialState.PRUNED:  # Optuna's tell takes its last intermediate value
            assert trial.value == pytest.approx(fake.val_l1[-1])
        elif trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(fake.best_val_l1)
    assert {t.state for t in by_id.values()} == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
