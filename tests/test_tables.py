"""Tables fitted to the terminal: `results`, `best`'s top trials, the live and confirmation
tables at 80 columns, and `results --wide`."""

import io
import json
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.support.fake_experiment import write_fake_experiment
from tune_adapter.cli import app
from tune_adapter.records.confirmation import confirm_table
from tune_adapter.records.fit_table import Column, FitTable, abbreviate, choose, format_number
from tune_adapter.records.results import ExperimentInfo, read_epochs, read_trials
from tune_adapter.search.live import LiveTable
from tune_adapter.views.top_trials import top_trials_table

runner = CliRunner()
NARROW = {"COLUMNS": "80"}
BASELINE = {"lr": 1e-3, "batch_size": 4, "audio_window": 5, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "fake"
    write_fake_experiment(folder, trials=12, baseline=BASELINE)
    return folder


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def rendered(renderable, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_results_at_80_columns_shows_every_trial_and_fits(experiment):
    result = runner.invoke(app, ["results", "--experiment", str(experiment)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert widest(result.output) <= 80
    for trial_id in read_trials(experiment)["trial_id"]:
        assert trial_id in result.output
    header = next(line for line in result.output.splitlines() if "trial" in line and "status" in line)
    assert "val_l1" in header and "ep" in header and " lr " in header and " bs " in header
    assert "4c1d2_00000 (baseline)" in result.output
    assert "bs=batch_size" in result.output  # the abbreviations are spelt out
    assert "not shown: " in result.output and "--wide" in result.output


def test_results_wide_shows_every_column(experiment):
    result = runner.invoke(app, ["results", "--experiment", str(experiment), "--wide"], env=NARROW)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "trial_id" in line)
    for column in read_trials(experiment).columns:
        assert f" {column} " in header
    assert widest(result.output) > 80  # not squeezed into the terminal
    assert "not shown" not in result.output


def test_results_epochs_fit_and_widen(experiment):
    epochs = read_epochs(experiment)
    narrow = runner.invoke(app, ["results", "--experiment", str(experiment), "--epochs"], env=NARROW)
    assert narrow.exit_code == 0 and widest(narrow.output) <= 80
    assert sum(line.startswith("│ 4c1d2_") for line in narrow.output.splitlines()) == len(epochs)
    assert "not shown: checkpoint" in narrow.output
    wide = runner.invoke(app, ["results", "--experiment", str(experiment), "--epochs", "--wide"], env=NARROW)
    header = next(line for line in wide.output.splitlines() if "trial_id" in line)
    assert all(f" {column} " in header for column in epochs.columns)


def test_results_csv_and_json_are_the_files_unchanged(experiment):
    trials = read_trials(experiment)
    csv = runner.invoke(app, ["results", "--experiment", str(experiment), "--format", "csv"], env=NARROW)
    assert csv.stdout == trials.to_csv(index=False)
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(csv.stdout)), pd.read_csv(io.StringIO(trials.to_csv(index=False))))
    as_json = runner.invoke(app, ["results", "--experiment", str(experiment), "--epochs", "--format", "json"],
                            env=NARROW)
    assert json.loads(as_json.stdout) == json.loads(read_epochs(experiment).to_json(orient="records"))


def test_best_at_80_columns_keeps_its_ranking_and_fits(experiment):
    result = runner.invoke(app, ["best", "--experiment", str(experiment), "--top", "5"], env=NARROW)
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
    assert all(len(line) <= 80 for line in table)
    assert "4c1d2_00000 (baseline)" in result.output and "best val_l1" in result.output
    assert sum(line.startswith("│ ") for line in table) == 5


def test_live_table_at_80_columns_keeps_full_headers():
    info = ExperimentInfo(name="default", params=["lr", "batch_size"], max_epochs=10, num_samples=16)
    live = LiveTable(info, SimpleNamespace(store=None))
    live.best, live.baseline = (0.03241, "t1", {"lr": 0.00123456, "batch_size": 4}), 0.0412
    text = rendered(live.render([]))
    assert widest(text) <= 80
    for header in ("running", "pending", "done", "pruned", "failed", "baseline val_l1", "best val_l1"):
        assert header in text
    assert "best parameters: lr=0.00123  batch_size=4" in text
    assert "run" in rendered(live.render([]), width=50) and widest(rendered(live.render([]), width=50)) <= 50


def test_live_table_counts_are_the_store_s_and_waiting_shows_only_while_some_wait(tmp_path):
    from tune_adapter.records.results import TrialStore

    info = ExperimentInfo(name="default", params=["lr"], max_epochs=10, num_samples=16)
    store = TrialStore(tmp_path, info)
    live = LiveTable(info, SimpleNamespace(store=store))
    tune_trial = lambda trial_id, status: SimpleNamespace(trial_id=trial_id, status=status, config={})  # noqa: E731
    assert "waiting" not in rendered(live.render([]), width=120)
    for trial_id, status in (("a", "waiting"), ("b", "waiting"), ("c", "pruned")):
        store.record_epoch(trial_id, {"lr": 1e-3}, {"epoch": 3, "val_l1": 0.5}, 1.0)
        store.record_end(trial_id, {"lr": 1e-3}, status)
    # Tune's view: a, b and c ended (TERMINATED); d runs with no result yet; e waits for a CPU.
    trials = [tune_trial(t, "TERMINATED") for t in "abc"] + [tune_trial("d", "RUNNING"), tune_trial("e", "PENDING")]
    lines = rendered(live.render(trials), width=120)
    header, counts = [line for line in lines.splitlines() if "waiting" in line or "│" in line][:2]
    names = [c.strip() for c in header.split("┃")[1:5]]
    assert names == ["running", "waiting", "pending", "done"]
    assert [c.strip() for c in counts.split("│")[1:6]] == ["1", "2", "1", "0", "1"]


def test_confirm_table_leaves_out_min_and_max_first():
    rows = [{"trial_id": t, "baseline": t.endswith("0"), "seed": s, "status": "completed",
             "best_val_l1": 0.03 + s / 1000, "test_l1": 0.04} for t in ("4c1d2_00003", "4c1d2_00000") for s in range(3)]
    text = rendered(confirm_table(pd.DataFrame(rows), "confirmation"), width=80)
    assert widest(text) <= 80 and "test_l1 mean ± sd" in text and "4c1d2_00000 (baseline)" in text
    assert "not shown: min, max" in text
    assert "min" in rendered(confirm_table(pd.DataFrame(rows), "confirmation"), width=120).splitlines()[2]


def test_top_trials_table_drops_val_cos_before_any_parameter(experiment):
    trials = read_trials(experiment)
    text = rendered(top_trials_table(trials, list(BASELINE), 3, "top 3"), width=90)
    assert "val_cos" in text.split("not shown:")[1] and widest(text.split("\n#1")[0]) <= 90


def test_choose_shortens_headers_then_drops_by_priority():
    columns = [Column("trial", ["t1"]), Column("learning_rate", ["0.001"], short="lr", priority=1),
               Column("batch_size", ["4"], short="bs", priority=2), Column("notes", ["x" * 30], priority=3)]
    assert [h for h in choose(columns, 200)[1]] == ["trial", "learning_rate", "batch_size", "notes"]
    shown, headers = choose(columns, 30)
    assert headers == ["trial", "learning_rate", "bs"]  # the cheaper full header came back
    shown, headers = choose(columns, 17)
    assert [c.header for c in shown] == ["trial", "learning_rate"] and headers == ["trial", "lr"]
    # A column that does not fit stops the optional ones: a later, narrower one never jumps the queue.
    wide_first = [Column("trial", ["t1"]), Column("big", ["y" * 20], priority=1), Column("s", ["1"], priority=2)]
    assert [c.header for c in choose(wide_first, 20)[0]] == ["trial"]


def test_fit_table_renders_within_the_width_it_is_given():
    table = FitTable([Column("trial", [f"t{i}" for i in range(3)]),
                      *(Column(f"parameter_{i}", ["0.123"] * 3, short=f"p{i}", priority=i + 1, explain=True)
                        for i in range(12))], hidden_hint="--wide shows every column")
    text = rendered(table, width=60)
    assert widest(text) <= 60 and "p0=parameter_0" in text and "(--wide shows every" in text
    assert "[red]oom" in rendered(FitTable([Column("error", ["[red]oom"])]))  # cells are text, not markup


def test_abbreviations_and_numbers():
    assert abbreviate(["lr", "batch_size", "audio_window", "dropout", "bottleneck"]) == {
        "lr": "lr", "batch_size": "bs", "audio_window": "aw", "dropout": "dropout", "bottleneck": "bottl"}
    assert abbreviate(["warm_steps", "weight_scale"]) == {"warm_steps": "warm_steps", "weight_scale": "weight_scale"}
    assert [format_number(v) for v in (0.00962123, 0.0324123, 12.3456, 123456.0, 4, float("nan"))] == [
        "0.00962", "0.03241", "12.35", "1.23e+05", "4", "-"]


def test_the_baseline_verdict_of_a_stopped_search_says_so_far():
    """Ctrl-C half way: not "did not beat its baseline", but how far it went."""
    from tune_adapter.records.results import baseline_verdict

    trials = pd.DataFrame({"trial_id": ["base", "a", "b"], "baseline": [True, False, False],
                           "status": ["completed", "pruned", "running"], "best_val_l1": [0.2, 0.3, 0.25]})
    assert baseline_verdict(trials) == ("the search has not beaten its baseline so far (1 trial unfinished): "
                                        "base (the space's BASELINE) has the best val_l1, 0.2000")
    trials.loc[2, "best_val_l1"] = 0.15
    assert baseline_verdict(trials).endswith("25.0% lower so far (1 trial unfinished)")
    trials.loc[2, "status"] = "completed"
    assert baseline_verdict(trials).endswith("25.0% lower")
    trials.loc[2, "best_val_l1"] = 0.3
    assert baseline_verdict(trials).startswith("the search did not beat its baseline: base")
