"""The edge rule (tune_adapter.records.edges), and `best` and the report that warn with it."""

import html

import pytest
from optuna.distributions import (CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)
from typer.testing import CliRunner

from tests.support.fake_experiment import write_fake_experiment
from tune_adapter.cli import app
from tune_adapter.records.edges import edge_side, edge_warnings, range_text
from tune_adapter.records.results import ExperimentInfo
from tune_adapter.report import write_report

runner = CliRunner()


@pytest.mark.parametrize("value, side", [(0.0, "bottom"), (0.5, "bottom"), (0.51, None), (5.0, None),
                                         (9.49, None), (9.5, "top"), (10.0, "top"), (-1.0, "below"),
                                         (11.0, "above")])
def test_linear_float_warns_in_its_outer_five_percent(value, side):
    assert edge_side(value, FloatDistribution(0.0, 10.0)) == side


@pytest.mark.parametrize("value, side", [(1e-5, "bottom"), (1.3e-5, "bottom"), (2e-5, None), (1e-3, None),
                                         (7e-3, None), (8e-3, "top"), (1e-2, "top")])
def test_log_float_is_measured_on_its_log_scale(value, side):
    # 5% of 1e-5..1e-2 in log is a factor of 10**0.15 = 1.41 from either end; linearly,
    # 2e-5 and 1e-3 would both count as the bottom 5%.
    assert edge_side(value, FloatDistribution(1e-5, 1e-2, log=True)) == side


@pytest.mark.parametrize("value, side", [(3, "bottom"), (5, None), (7, None), (9, "top"), (9.0, "top")])
def test_int_warns_at_either_end(value, side):
    assert edge_side(value, IntDistribution(3, 9, step=2)) == side


@pytest.mark.parametrize("value, side", [(2, "bottom"), (4, None), (8, "top")])
def test_numeric_categorical_warns_at_its_smallest_and_largest_choice(value, side):
    assert edge_side(value, CategoricalDistribution([4, 8, 2])) == side


@pytest.mark.parametrize("distribution, value", [
    (FloatDistribution(0.01, 0.01), 0.01), (IntDistribution(4, 4), 4), (CategoricalDistribution([8]), 8),
    (CategoricalDistribution(["adam", "sgd"]), "sgd"), (CategoricalDistribution([True, False]), True)])
def test_single_values_and_unordered_choices_never_warn(distribution, value):
    assert edge_side(value, distribution) is None


def test_range_text_is_what_a_space_file_says():
    assert range_text(FloatDistribution(1e-5, 1e-2, log=True)) == "1e-05..0.01 (log)"
    assert range_text(IntDistribution(3, 9, step=2)) == "3..9 (step 2)"
    assert range_text(FloatDistribution(0.0, 0.1)) == "0..0.1"
    assert range_text(CategoricalDistribution([2, 4, 8])) == "2|4|8"


def test_warning_names_the_parameter_its_range_and_the_continue_command():
    info = ExperimentInfo(name="default", params=["lr", "batch_size"], space="spaces/mine.py",
                          distributions={"lr": distribution_to_json(FloatDistribution(1e-5, 1e-2, log=True)),
                                         "batch_size": distribution_to_json(CategoricalDistribution([2, 4, 8]))})
    lines = edge_warnings({"lr": 0.00962, "batch_size": 4}, info, trials=16)
    assert lines == ["lr 0.00962 lies at the top of its range 1e-05..0.01 (log): widen it in the space file "
                     "and add trials with tune-adapter search --space spaces/mine.py --name default "
                     "--continue --num-samples 32"]
    assert edge_warnings({"lr": 1e-4, "batch_size": 4}, info, trials=16) == []


# The fake search's curves are best at lr 1e-3 and audio_window 5: a baseline there wins,
# here at the top of both ranges; weight_decay sits inside its own.
EDGE_DISTRIBUTIONS = {"lr": FloatDistribution(1e-5, 1e-3, log=True), "audio_window": IntDistribution(1, 5, step=2),
                      "weight_decay": FloatDistribution(0.0, 0.1)}
EDGE_BASELINE = {"lr": 1e-3, "audio_window": 5, "weight_decay": 0.05}


@pytest.fixture(scope="module")
def at_edge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "edge"
    write_fake_experiment(folder, trials=10, distributions=EDGE_DISTRIBUTIONS, baseline=EDGE_BASELINE)
    return folder


def test_best_warns_of_each_parameter_at_an_edge(at_edge):
    result = runner.invoke(app, ["best", "--experiment", str(at_edge)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "#1 4c1d2_00000:" in result.output  # the baseline wins, as the warnings below assume
    warnings = [line for line in result.output.splitlines() if " of its range " in line]
    assert [w.split(" lies")[0] for w in warnings] == ["lr 0.001", "audio_window 5"]
    assert "at the top of its range 1e-05..0.001 (log)" in warnings[0]
    assert all("--name edge --continue --num-samples 26" in w for w in warnings)


def test_best_is_silent_when_the_winner_is_inside_every_range(tmp_path):
    baseline = {"lr": 1e-3, "batch_size": 4, "audio_window": 5, "weight_decay": 0.05}
    write_fake_experiment(tmp_path / "inside", trials=10, baseline=baseline)
    result = runner.invoke(app, ["best", "--experiment", str(tmp_path / "inside")], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "of its range" not in result.output


def test_report_warns_of_each_parameter_at_an_edge(at_edge):
    page = html.unescape(write_report(at_edge, at_edge / "report.html").read_text())
    assert "lr 0.001 lies at the top of its range 1e-05..0.001 (log): widen it" in page
    assert "audio_window 5 lies at the top of its range 1..5 (step 2)" in page
    assert "weight_decay" not in page.split("<ul class='edges'>")[1].split("</ul>")[0]


def test_a_shipped_space_is_widened_in_a_copy():
    from tune_adapter.records.edges import widen_advice
    from tune_adapter.space import SHIPPED_DIR

    assert "cp " in widen_advice(str(SHIPPED_DIR / "default.py")) and "--space my_space.py" in \
        widen_advice(str(SHIPPED_DIR / "default.py"))
    # Recorded by name (and by the installed path they had before they moved to search_spaces/).
    assert f"cp {SHIPPED_DIR / 'default.py'} my_space.py" in widen_advice("default") or \
        "cp search_spaces/default.py my_space.py" in widen_advice("default")
    assert "cp " in widen_advice("/old/site-packages/tune_adapter/search_spaces/default.py")
    assert widen_advice("/home/me/space.py").endswith("--space /home/me/space.py")


def test_new_categorical_choices_are_a_warm_started_search_not_a_continue():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from tune_adapter.records.edges import next_search
    from tune_adapter.records.results import ExperimentInfo

    info = ExperimentInfo(name="default", params=["lr"])
    assert next_search(info, 16, [CategoricalDistribution([2, 4])]) == "--name default-2 --warm-start results/default"
    assert next_search(info, 16, [FloatDistribution(1e-4, 1e-2)]) == "--name default --continue --num-samples 32"
    # One follow-up for all: a categorical among the edges makes every line warm-start.
    assert next_search(info, 16, [FloatDistribution(1e-4, 1e-2), CategoricalDistribution([2, 4])]) == \
        "--name default-2 --warm-start results/default"


def test_every_edge_warning_of_one_winner_suggests_the_same_command():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    info = ExperimentInfo(name="default", params=["lr", "batch_size"], space="/home/me/space.py",
                          distributions={"lr": distribution_to_json(FloatDistribution(1e-5, 1e-2, log=True)),
                                         "batch_size": distribution_to_json(CategoricalDistribution([2, 4, 8]))})
    lines = edge_warnings({"lr": 0.00962, "batch_size": 8}, info, trials=16)
    assert len(lines) == 2 and {line.split(": ", 1)[1] for line in lines} == {
        "widen it in the space file and add trials with tune-adapter search --space /home/me/space.py "
        "--name default-2 --warm-start results/default"}
