"""The report's fANOVA importances of a search with finalists: every trial's val_l1 at the
finals rung, pruned trials included, since only the finalists and the baseline complete."""

import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from tests.support.fake_experiment import (DISTRIBUTIONS, MAX_EPOCHS, RUNGS, SCHEDULER,
                                           write_fake_experiment)
from tune_adapter.records.results import TrialStore
from tune_adapter.report import write_report
from tune_adapter.report.experiment import load_experiment
from tune_adapter.report.importance import SEED, finals_epoch, param_importances
from tune_adapter.search.scheduler import finals_rung

BASELINE = {"lr": 1e-4, "batch_size": 4, "audio_window": 5, "weight_decay": 0.01}
RUNG = RUNGS[-1]


def finalists_search(folder: Path, search: dict | None = None, trials: int = 12,
                     distributions=DISTRIBUTIONS) -> list:
    """A search with one finalist, as `tune-adapter search` runs one by default; `search`:
    what its description records (default: the settings it ran with)."""
    recorded = {**SCHEDULER, "finalists": 1} if search is None else search
    return write_fake_experiment(folder, trials=trials, seed=0, baseline=BASELINE, finalists=1,
                                 search=recorded, distributions=distributions)


@pytest.fixture(scope="module")
def finals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "finals"
    trials = finalists_search(folder)
    return folder, trials, load_experiment(folder)


def reached(trials) -> list:
    return [t for t in trials if len(t.val_l1) >= RUNG and t.status != "error"]


def test_the_fake_search_completes_only_the_baseline_and_one_finalist(finals):
    _, trials, experiment = finals
    assert finals_rung(SCHEDULER["grace_period"], SCHEDULER["reduction_factor"], MAX_EPOCHS) == RUNG
    assert finals_epoch(experiment.info) == (RUNG, "")
    assert sum(t.status == "completed" for t in trials) == 2  # too few for fANOVA on their own
    assert sum(t.status == "pruned" for t in reached(trials)) >= 4
    assert any(t.status == "pruned" and len(t.val_l1) < RUNG for t in trials)


def test_importances_read_every_trial_at_the_finals_rung(finals):
    _, trials, experiment = finals
    importances = param_importances(experiment)
    assert set(importances.values) == set(DISTRIBUTIONS)
    assert sum(importances.values.values()) == pytest.approx(1.0)
    short = len(trials) - len(reached(trials))
    assert importances.caption == (
        f"fANOVA (seed 0): val_l1 at epoch {RUNG} (the finals rung, where the finalists are chosen) "
        f"of the {len(reached(trials))} trials that reached it; the {short} that did not are left out")
    assert importances.note == ""


def test_the_values_are_each_trials_val_l1_at_the_rung(finals):
    # The same fANOVA on a study built by hand from the fake's own numbers.
    _, trials, experiment = finals
    study = optuna.create_study(direction="minimize")
    distributions = experiment.distributions()
    for trial in reached(trials):
        study.add_trial(optuna.trial.create_trial(params=trial.params, distributions=distributions,
                                                  value=trial.val_l1[RUNG - 1]))
    expected = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=SEED))
    assert param_importances(experiment).values == pytest.approx(dict(expected))


def test_a_trial_still_running_past_the_rung_counts(tmp_path):
    trials = finalists_search(tmp_path)
    store = TrialStore(tmp_path, load_experiment(tmp_path).info)
    params = {"lr": 2e-3, "batch_size": 8, "audio_window": 7, "weight_decay": 0.05}
    for epoch in range(1, RUNG + 1):  # waiting at the rung: no end recorded
        metrics = {"epoch": epoch, "train_loss": 0.3, "val_l1": 0.5 / epoch, "val_mse": 0.2,
                   "val_cos": 0.8, "epoch_seconds": 2.0, "step": 10 * epoch}
        store.record_epoch("live_00000", params, metrics, wall_seconds=2.0 * epoch)
    importances = param_importances(load_experiment(tmp_path))
    assert f"of the {len(reached(trials)) + 1} trials that reached it" in importances.caption
    assert set(importances.values) == set(DISTRIBUTIONS)


@pytest.mark.parametrize("search, reason", [
    ({"data": {}}, "(this experiment records no grace period, reduction factor and finalists, "
                   "so its finals rung is unknown)"),
    ({**SCHEDULER, "finalists": 0}, "(no finals rung: --finalists 0, ASHA alone promoted trials to the end)"),
    ({"grace_period": MAX_EPOCHS, "reduction_factor": 2, "finalists": 1},
     f"(no finals rung: with grace period {MAX_EPOCHS} and reduction factor 2, ASHA has no rung "
     f"below max epochs {MAX_EPOCHS})"),
])
def test_without_a_finals_rung_the_completed_trials_are_read_and_the_caption_says_why(tmp_path, search, reason):
    finalists_search(tmp_path, search)
    importances = param_importances(load_experiment(tmp_path))
    assert importances.caption == f"fANOVA (seed 0): best val_l1 of the completed trials, n = 2 {reason}"
    assert importances.values == {}
    assert importances.note == "Importances need at least 3 completed trials; this experiment has 2."


def test_a_param_with_one_value_at_the_rung_is_left_out(tmp_path):
    finalists_search(tmp_path, distributions={**DISTRIBUTIONS, "batch_size": IntDistribution(4, 4)})
    importances = param_importances(load_experiment(tmp_path))
    assert set(importances.values) == {"lr", "audio_window", "weight_decay"}
    assert importances.note == f"Left out (one value in every trial at epoch {RUNG}): batch_size."


def test_too_few_trials_at_the_rung_give_a_sentence(tmp_path):
    trials = finalists_search(tmp_path, trials=2)
    assert len(reached(trials)) < 3
    importances = param_importances(load_experiment(tmp_path))
    assert importances.values == {}
    assert importances.note == (f"Importances need at least 3 trials at epoch {RUNG} (the finals rung); "
                                f"this experiment has {len(reached(trials))}.")


@pytest.mark.slow
def test_the_report_shows_the_rung_importances_and_paths_below_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("results") / "finals"
    finalists_search(folder)
    html = write_report(folder, folder / "report.html").read_text()
    fanova = re.search(r"<div class='fANOVA'>(.*?)</div>", html, re.S).group(1)
    assert f"val_l1 at epoch {RUNG} (the finals rung" in fanova and "<img" in fanova
    assert "experiment</dt><dd>finals (results/finals)</dd>" in html
    assert "checkpoint: results/finals/trial_" in html and str(tmp_path) not in html
