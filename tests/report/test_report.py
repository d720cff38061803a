import base64
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.support.fake_experiment import DISTRIBUTIONS, write_fake_experiment
from tune_adapter.cli import app
from tune_adapter.errors import UserError
from tune_adapter.records.results import ExperimentInfo, TrialStore, latest_experiment
from tune_adapter.report import write_report
from tune_adapter.report.experiment import load_experiment
from tune_adapter.report.importance import param_importances, rebuild_study
from tune_adapter.report.plots import curves_figure, params_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


class ReportParser(HTMLParser):
    """The parts of the report the tests check: images, top-table rows, text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.rows: list[dict] = []  # top-table rows: classes and cell texts
        self.links: list[str] = []
        self._cells: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "tr" and "result" in attrs.get("class", "").split():
            self.rows.append({"classes": attrs["class"].split(), "cells": []})
            self._cells = self.rows[-1]["cells"]
        elif tag == "tr":
            self._cells = None
        if tag == "td" and self._cells is not None:
            self._cells.append("")

    def handle_data(self, data):
        self.text.append(data)
        if self._cells:
            self._cells[-1] += data


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "fake-search"
    trials = write_fake_experiment(folder, trials=10, seed=0)
    report = write_report(folder, folder / "report.html")
    parsed = ReportParser()
    parsed.feed(report.read_text())
    return folder, trials, report, parsed


def test_the_fake_search_has_every_kind_of_trial(fake):
    _, trials, _, _ = fake
    statuses = [t.status for t in trials]
    assert statuses.count("pruned") >= 2 and statuses.count("error") == 1
    assert statuses.count("completed") >= 3


def test_report_is_one_self_contained_file(fake):
    _, _, report, parsed = fake
    assert report.is_file()
    html = report.read_text()
    assert "<script" not in html and "<link" not in html
    assert not [link for link in parsed.links if not link.startswith("data:image/png;base64,")]
    # curves, best so far, parameters, parallel coordinates, fANOVA and PED-ANOVA importances
    assert len(parsed.images) == 6
    for src in parsed.images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_top_table_ranks_trials_by_best_val_l1(fake):
    folder, trials, _, parsed = fake
    expected = sorted(trials, key=lambda t: (t.best_val_l1, int(t.trial_id[-5:])))
    assert [row["cells"][1] for row in parsed.rows] == [t.trial_id for t in expected]
    head = ["rank", "trial", "status", *DISTRIBUTIONS, "best val_l1"]
    for rank, (row, trial) in enumerate(zip(parsed.rows, expected), start=1):
        cells = dict(zip(head, row["cells"]))
        assert cells["rank"] == str(rank)
        assert cells["status"] == trial.status and trial.status in row["classes"]
        assert float(cells["best val_l1"]) == pytest.approx(trial.best_val_l1, rel=1e-3)
        assert float(cells["lr"]) == pytest.approx(trial.params["lr"], rel=1e-3)
        assert cells["audio_window"] == str(trial.params["audio_window"])
    assert "best" in parsed.rows[0]["classes"]
    checkpoint = f"/trial_{expected[0].trial_id}/checkpoint_"
    assert checkpoint in report_text(parsed)


def test_summary_names_the_best_trial_and_counts_statuses(fake):
    _, trials, _, parsed = fake
    text = report_text(parsed)
    best = min(trials, key=lambda t: t.best_val_l1)
    assert f"best trial{best.trial_id}: val_l1 {best.best_val_l1:.4g}" in text
    counts = {s: sum(t.status == s for t in trials) for s in ("completed", "pruned", "error")}
    assert f"{len(trials)}: {counts['completed']} completed, {counts['pruned']} pruned, 1 error" in text
    assert "RuntimeError: CUDA out of memory" in text  # the failed trial's last error line


def test_importances_cover_every_param_and_sum_to_one(fake):
    folder, _, _, parsed = fake
    importances = param_importances(load_experiment(folder))
    assert set(importances.values) == set(DISTRIBUTIONS)
    assert all(v >= 0 for v in importances.values.values())
    assert sum(importances.values.values()) == pytest.approx(1.0)
    shown = report_text(parsed)
    for name, value in importances.values.items():
        assert f"{name} {value:.3f}" in shown


def test_rebuilt_study_holds_each_trial_with_its_state_and_curve(fake):
    folder, trials, _, _ = fake
    study = rebuild_study(load_experiment(folder))
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    states = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "error": TrialState.FAIL}
    for trial in trials:
        frozen = by_id[trial.trial_id]
        assert frozen.state == states[trial.status]
        assert frozen.params["audio_window"] == trial.params["audio_window"]
        assert frozen.params["lr"] == pytest.approx(trial.params["lr"])
        assert list(frozen.intermediate_values.values()) == pytest.approx(trial.val_l1)
        if trial.status == "completed":
            assert frozen.value == pytest.approx(trial.best_val_l1)
    assert isinstance(study.trials[0].distributions["lr"], FloatDistribution)


def test_pruned_trials_are_marked_where_they_stopped(fake):
    folder, trials, _, _ = fake
    ax = curves_figure(load_experiment(folder)).axes[0]
    stops = {(float(x), float(y)) for line in ax.get_lines() if line.get_marker() == "x"
             for x, y in zip(line.get_xdata(), line.get_ydata())}
    pruned = [t for t in trials if t.status == "pruned"]
    assert stops == {(float(len(t.val_l1)), t.val_l1[-1]) for t in pruned}
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata()) > 1]
    assert len(dashed) == len(pruned)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    best = min(trials, key=lambda t: t.best_val_l1)
    assert "pruned by ASHA" in legend and f"best: {best.trial_id}" in legend


@pytest.mark.slow
def test_param_axes_follow_the_distributions(tmp_path):
    # "train-loss": a param name that is no Python identifier still gets its column and panel.
    distributions = {**DISTRIBUTIONS, "train-loss": CategoricalDistribution(["l1", "mse", "smooth_l1"])}
    write_fake_experiment(tmp_path, trials=8, distributions=distributions)
    axes = {ax.get_xlabel(): ax for ax in params_figure(load_experiment(tmp_path)).axes if ax.get_visible()}
    assert set(axes) == set(distributions)
    assert axes["lr"].get_xscale() == "log"
    assert axes["audio_window"].get_xscale() == "linear"
    assert list(axes["audio_window"].get_xticks()) == [1, 3, 5, 7, 9]
    assert [t.get_text() for t in axes["train-loss"].get_xticklabels()] == ["l1", "mse", "smooth_l1"]
    html = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert "<th>train-loss</th>" in html and "train-loss " in html  # table and importances


@pytest.mark.slow
def test_too_few_completed_trials_give_a_sentence_not_a_chart(tmp_path):
    made = write_fake_experiment(tmp_path, trials=2)
    assert sum(t.status == "completed" for t in made) < 3
    html = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert html.count("<img") == 4  # no importance chart: neither has enough trials
    assert "Importances need at least 3 completed trials" in html
    assert "PED-ANOVA needs an epoch that at least 10 trials reached" in html


@pytest.mark.slow
def test_one_varying_param_gives_a_sentence(tmp_path):
    write_fake_experiment(tmp_path, trials=8, distributions={"lr": DISTRIBUTIONS["lr"]})
    importances = param_importances(load_experiment(tmp_path))
    assert importances.values == {} and "only lr varies" in importances.note


@pytest.mark.slow
def test_constant_param_is_left_out_of_importances(tmp_path):
    distributions = {**DISTRIBUTIONS, "batch_size": IntDistribution(4, 4)}
    write_fake_experiment(tmp_path, trials=10, distributions=distributions)
    importances = param_importances(load_experiment(tmp_path))
    assert set(importances.values) == {"lr", "audio_window", "weight_decay"}
    assert sum(importances.values.values()) == pytest.approx(1.0)
    assert "batch_size" in importances.note


@pytest.mark.slow
def test_cli_writes_the_report_of_the_latest_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    older, newer = Path("results/older"), Path("results/newer")
    write_fake_experiment(older, trials=4, seed=1)
    write_fake_experiment(newer, trials=4, seed=2)
    os.utime(newer / "trials.parquet", (1_000, 1_000))  # `older` was written last
    assert latest_experiment() == older
    result = runner.invoke(app, ["report"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (older / "report.html").is_file() and not (newer / "report.html").exists()
    assert "report: results/older/report.html" in result.output


@pytest.mark.slow
def test_cli_takes_experiment_and_out(tmp_path):
    write_fake_experiment(tmp_path / "exp", trials=4)
    out = tmp_path / "site" / "search.html"
    result = runner.invoke(app, ["report", "--experiment", str(tmp_path / "exp"), "--out", str(out)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert str(out) in result.output


@pytest.mark.parametrize("setup, needle", [
    (lambda d: d.mkdir(), "has no trials.parquet"),
    (lambda d: None, "is not a folder"),
    (lambda d: TrialStore(d, ExperimentInfo(name="x", params=["lr"])).write(), "has no trial with a val_l1"),
])
def test_cli_bad_folder_is_one_line_and_writes_nothing(tmp_path, setup, needle):
    folder = tmp_path / "exp"
    setup(folder)
    result = runner.invoke(app, ["report", "--experiment", str(folder)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert str(folder) in lines[0]
    assert not (folder / "report.html").exists()


def test_no_experiment_under_results_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no experiment under results/"):
        latest_experiment()
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 2 and "tune-adapter search" in result.stderr


def report_text(parsed: ReportParser) -> str:
    return "".join(parsed.text)


@pytest.mark.slow
def test_a_running_trial_is_shown_and_kept_out_of_importances(tmp_path):
    made = write_fake_experiment(tmp_path, trials=8)
    store = TrialStore(tmp_path, load_experiment(tmp_path).info)
    params = {"lr": 1e-3, "batch_size": 4, "audio_window": 5, "weight_decay": 0.0}
    metrics = {"epoch": 1, "train_loss": 0.5, "val_l1": 0.45, "val_mse": 0.3, "val_cos": 0.8,
               "epoch_seconds": 2.0, "step": 10}
    store.record_epoch("live_00000", params, metrics, wall_seconds=2.0)
    experiment = load_experiment(tmp_path)
    study = rebuild_study(experiment)
    running = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert [t.user_attrs["trial_id"] for t in running] == ["live_00000"]
    assert set(param_importances(experiment).values) == set(DISTRIBUTIONS)
    html = write_report(tmp_path, tmp_path / "report.html").read_text()
    assert f"{len(made) + 1}: " in html and "1 running" in html


@pytest.mark.slow
def test_the_baseline_is_marked_and_compared_with_the_winner(tmp_path):
    folder = tmp_path / "with-baseline"
    baseline = {"lr": 1e-5, "batch_size": 2, "audio_window": 9, "weight_decay": 0.01}  # a poor one
    trials = write_fake_experiment(folder, trials=24, seed=0, baseline=baseline)
    parsed = ReportParser()
    parsed.feed(write_report(folder, folder / "report.html").read_text())
    base, best = trials[0], min(trials, key=lambda t: t.best_val_l1)
    ranked = sorted(trials, key=lambda t: (t.best_val_l1, int(t.trial_id[-5:])))
    assert ranked.index(base) >= 10  # below the top ten, shown all the same
    rows = [row["cells"] for row in parsed.rows]
    assert len(rows) == 11 and rows[-1][:2] == [str(ranked.index(base) + 1), f"{base.trial_id} (baseline)"]
    gain = 1 - best.best_val_l1 / base.best_val_l1
    assert (f"best {best.trial_id} val_l1 {best.best_val_l1:.4f} against baseline {base.trial_id} "
            f"{base.best_val_l1:.4f}: {gain:.1%} lower") in report_text(parsed)
