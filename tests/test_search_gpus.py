"""GPU shares of search trials, on this CPU machine: Ray's logical GPUs and a faked torch.cuda."""

from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.errors import ConfigError
from tune_adapter.search import SearchOptions
from tune_adapter.search.driver import trial_resources

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "search_spaces" / "tiny.py"


def search_args(tmp_path, synth, *extra) -> list[str]:
    return ["search", "--space", str(TINY), "--manifest", str(synth["train"]),
            "--val-manifest", str(synth["val"]), "--num-samples", "2", "--max-epochs", "1",
            "--storage", str(tmp_path / "results"), *extra]


@pytest.mark.parametrize("resources, nodes, message", [
    ({"cpu": 1, "gpu": 0.5}, [{"CPU": 8}], "the Ray cluster has no GPUs (1 node(s)); use --gpus-per-trial 0"),
    # A trial runs on one node: two 1-GPU nodes cannot hold a 2-GPU trial.
    ({"cpu": 1, "gpu": 2}, [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], "at most 1 on one of 2 node(s)"),
    ({"cpu": 4, "gpu": 0}, [{"CPU": 2}], "--cpus-per-trial 4: no node"),
])
def test_a_trial_no_node_can_hold_is_refused(resources, nodes, message):
    from tune_adapter.search.driver import check_fits

    with pytest.raises(ConfigError, match="Ray cluster") as refused:
        check_fits(resources, nodes)
    assert message in str(refused.value)


@pytest.mark.parametrize("resources", [{"cpu": 1, "gpu": 0.5}, {"cpu": 2, "gpu": 1}, {"cpu": 1, "gpu": 0}])
def test_a_trial_that_fits_a_node_is_let_through(resources):
    from tune_adapter.search.driver import check_fits

    check_fits(resources, [{"CPU": 1}, {"CPU": 2, "GPU": 1}])


def test_half_a_gpu_on_a_cluster_without_gpus_is_refused_before_any_trial(tmp_path, synth_small):
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        opts = SearchOptions(space=TINY, gpus_per_trial=0.5, storage=tmp_path / "results")
        with pytest.raises(ConfigError, match="no GPUs"):
            trial_resources(opts)
        # The command: one line naming the flag, exit 2, and no experiment folder.
        result = CliRunner().invoke(app, search_args(tmp_path, synth_small, "--gpus-per-trial", "0.5"))
    finally:
        ray.shutdown()
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert "--gpus-per-trial 0.5: the Ray cluster has no GPUs" in result.stderr
    assert not (tmp_path / "results" / "tiny").exists()


def test_more_than_one_gpu_must_be_whole(tmp_path, synth_small):
    with pytest.raises(ConfigError):
        SearchOptions(space=TINY, gpus_per_trial=2.5)
    assert SearchOptions(space=TINY, gpus_per_trial=2).gpus_per_trial == 2
    result = CliRunner().invoke(app, search_args(tmp_path, synth_small, "--gpus-per-trial", "1.5"))
    assert result.exit_code == 2 and "--gpus-per-trial 1.5: above 1, a trial takes whole GPUs" in result.stderr
    assert not (tmp_path / "results").exists()
