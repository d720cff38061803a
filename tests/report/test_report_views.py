"""The report's PED-ANOVA importances (pruned trials included) and its parallel-coordinates
figure, on a fake search (no Ray)."""

import re

import matplotlib
import pytest
from optuna.distributions import CategoricalDistribution

from tests.support.fake_experiment import DISTRIBUTIONS, write_fake_experiment
from tune_adapter.report import ped_anova, write_report
from tune_adapter.report.experiment import RANK_METRIC, load_experiment
from tune_adapter.report.parallel import CMAP, parallel_figure
from tune_adapter.report.ped_anova import epoch_importances, epoch_study

WITH_CHOICES = {**DISTRIBUTIONS, "train-loss": CategoricalDistribution(["l1", "mse", "smooth_l1"])}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "views"
    trials = write_fake_experiment(folder, trials=12, seed=0, distributions=WITH_CHOICES)
    return folder, trials, load_experiment(folder)


def deepest(trials, least: int) -> int:
    return max(e for e in range(1, 9) if sum(len(t.val_l1) >= e for t in trials) >= least)


def test_ped_anova_reads_the_highest_epoch_enough_trials_reached(fake):
    _, trials, experiment = fake
    epoch = deepest(trials, ped_anova.MIN_AT_EPOCH)
    reached = [t for t in trials if len(t.val_l1) >= epoch]
    assert epoch > 1 and any(t.status == "pruned" for t in reached)
    importances = epoch_importances(experiment)
    assert f"val_l1 at epoch {epoch}," in importances.caption
    assert f"n = {len(reached)} trials incl. pruned" in importances.caption
    assert set(importances.values) == set(WITH_CHOICES)
    assert sum(importances.values.values()) == pytest.approx(1.0)
    assert epoch_importances(experiment).values == importances.values  # no randomness
    study = epoch_study(experiment, ped_anova.deepest_epoch(experiment.epochs)[1])
    values = {t.user_attrs["trial_id"]: t.value for t in study.trials}
    assert values == pytest.approx({t.trial_id: t.val_l1[epoch - 1] for t in reached})


def test_a_lower_minimum_moves_it_to_a_later_epoch(fake, monkeypatch):
    _, trials, experiment = fake
    monkeypatch.setattr(ped_anova, "MIN_AT_EPOCH", 4)
    epoch = deepest(trials, 4)
    assert epoch > deepest(trials, 10)
    assert f"val_l1 at epoch {epoch}," in epoch_importances(experiment).caption


def test_no_epoch_with_enough_trials_gives_a_sentence(fake, monkeypatch):
    _, trials, experiment = fake
    monkeypatch.setattr(ped_anova, "MIN_AT_EPOCH", len(trials) + 1)
    importances = epoch_importances(experiment)
    assert importances.values == {}
    assert f"at least {len(trials) + 1} trials reached" in importances.note
    assert f"the most at any epoch is {len(trials)}" in importances.note


@pytest.mark.slow
def test_the_report_shows_both_importances_side_by_side(fake):
    folder, trials, experiment = fake
    html = write_report(folder, folder / "report.html").read_text()
    pair = re.search(r"<div class='pair'>(.*?)</div></div>", html, re.S).group(1)
    completed = sum(t.status == "completed" for t in trials)
    fanova, ped = pair.split("<div class='PED-ANOVA'>")
    assert f"best val_l1 of the completed trials, n = {completed}" in fanova and "<img" in fanova
    assert epoch_importances(experiment).caption in ped and "<img" in ped
    assert "<h2>Parallel coordinates</h2>" in html


def lines_by_trial(figure):
    return {line.get_gid(): line for line in figure.axes[0].get_lines()}


def test_parallel_lines_pass_through_each_trials_values(fake):
    _, trials, experiment = fake
    figure = parallel_figure(experiment)
    figure.draw_without_rendering()  # constrained layout places the axes
    host = figure.axes[0]
    names = [t.get_text() for t in host.get_xticklabels()]
    assert names == [*WITH_CHOICES, RANK_METRIC]
    twins = [ax for ax in figure.axes[1:] if ax.get_shared_x_axes().joined(host, ax)]
    assert len(twins) == len(names)
    lines = lines_by_trial(figure)
    assert set(lines) == {t.trial_id for t in trials}
    for trial in trials:
        values = {**trial.params, RANK_METRIC: trial.best_val_l1}
        for x, (name, twin) in enumerate(zip(names, twins)):
            value = values[name]
            if name == "train-loss":
                value = ["l1", "mse", "smooth_l1"].index(value)
            drawn = host.transData.transform((x, lines[trial.trial_id].get_ydata()[x]))[1]
            assert drawn == pytest.approx(twin.transData.transform((x, value))[1], abs=1e-6)
    by_name = dict(zip(names, twins))
    assert by_name["lr"].get_yscale() == "log" and by_name["weight_decay"].get_yscale() == "linear"
    assert list(by_name["audio_window"].get_yticks()) == [1, 3, 5, 7, 9]
    labels = [t.get_text() for t in by_name["train-loss"].get_yticklabels()]
    assert labels == ["l1", "mse", "smooth_l1"]


def test_parallel_lines_are_coloured_by_best_val_l1(fake):
    _, trials, experiment = fake
    lines = lines_by_trial(parallel_figure(experiment))
    ranked = sorted(trials, key=lambda t: t.best_val_l1)
    cmap = matplotlib.colormaps[CMAP]
    assert matplotlib.colors.to_rgba(lines[ranked[0].trial_id].get_color()) == pytest.approx(cmap(0.0))
    assert matplotlib.colors.to_rgba(lines[ranked[-1].trial_id].get_color()) == pytest.approx(cmap(1.0))
    assert lines[ranked[0].trial_id].get_linewidth() > lines[ranked[1].trial_id].get_linewidth()
    for trial in trials:
        dashed = lines[trial.trial_id].get_linestyle() == "--"
        assert dashed == (trial.status in ("pruned", "error") and trial is not ranked[0])
