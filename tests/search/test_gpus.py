"""GPU shares of search trials, on this CPU machine: Ray's logical GPUs and a faked torch.cuda."""

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.errors import ConfigError
from tune_adapter.records.results import read_info, read_trials
from tune_adapter.search import SearchOptions, run_search
from tune_adapter.search.driver import trial_resources
from tune_adapter.space import SHIPPED_DIR

TINY = SHIPPED_DIR / "tiny.py"


def options(tmp_path, synth, name, **overrides) -> SearchOptions:
    values = dict(space=TINY, manifest=synth["train"], val_manifest=synth["val"], max_epochs=1,
                  storage=tmp_path / "results", name=name, quiet=True, seed=0, max_failures=0,
                  cpus_per_trial=0.5)
    return SearchOptions(**{**values, **overrides})


def search_args(tmp_path, synth, *extra) -> list[str]:
    return ["search", "--space", str(TINY), "--manifest", str(synth["train"]),
            "--val-manifest", str(synth["val"]), "--num-samples", "2", "--max-epochs", "1",
            "--storage", str(tmp_path / "results"), *extra]


@pytest.mark.parametrize("resources, nodes, message", [
    ({"cpu": 1, "gpu": 0.5}, [{"CPU": 8}], "the Ray cluster has no GPUs (1 node(s)); use --gpus-per-trial 0"),
    # A trial runs on one node: two 1-GPU nodes cannot hold a 2-GPU trial.
    ({"cpu": 1, "gpu": 2}, [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], "at most 1 on one of 2 node(s)"),
    ({"cpu": 4, "gpu": 0}, [{"CPU": 2}], "--cpus-per-trial 4: no node"),
    # CPUs on one node, the GPU on another: no node holds the trial.
    ({"cpu": 4, "gpu": 0.5}, [{"CPU": 64}, {"CPU": 2, "GPU": 1}],
     "--cpus-per-trial 4 with --gpus-per-trial 0.5: no node of the Ray cluster has both"),
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


@pytest.mark.slow
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


def probes(folder: Path) -> dict[str, list]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
            for p in Path(f"{folder}-probe").glob("*.jsonl")}


def told_to_optuna(experiment_dir: Path, info, trial_ids) -> dict[str, str]:
    """Each Tune trial's state in the study, from the searcher state Tune saved in the
    experiment. By trial id: the store numbers trials in the order they first report, which
    for trials side by side need not be the order Optuna numbered them in."""
    from tune_adapter.search.study import open_study, tune_trials

    by_id = tune_trials(open_study(experiment_dir, info.name))
    return {t: by_id[t].state.name for t in trial_ids}


@pytest.mark.slow
def test_gpu_shares_cap_memory_release_it_and_out_of_memory_is_an_error(tmp_path, synth_small):
    """On a faked CUDA machine with one logical Ray GPU: half-GPU trials train on cuda capped
    at half its memory and release the cache after; batch size 8 runs out of memory and ends
    as `error` (Optuna: FAIL) while the search goes on. Zero-GPU trials train on the CPU."""
    from tests.support.trainables import fake_gpu_trial

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        half = run_search(options(tmp_path, synth_small, "half", gpus_per_trial=0.5, num_samples=6),
                          trainable=fake_gpu_trial)
        none = run_search(options(tmp_path, synth_small, "none", gpus_per_trial=0, num_samples=2),
                          trainable=fake_gpu_trial)
    finally:
        ray.shutdown()

    trials = read_trials(half.experiment_dir).set_index("trial_id")
    seen = probes(tmp_path / "results" / "half")
    assert set(seen) == set(trials.index) and half.complete
    # What a completed trial does after its last report races the end of the search (Tune
    # stops its actor); a failed trial's release comes before its error reaches the driver.
    for trial_id, calls in seen.items():
        assert calls[:2] == [["cap", 0.5, "cuda"], ["train", "cuda"]]
    big = trials[trials["batch_size"] == 8]
    assert len(big) >= 1 and (trials["batch_size"] == 4).any(), "the seeded space gave one batch size only"
    assert (big["status"] == "error").all()
    assert big["error"].str.contains("GpuOutOfMemory: out of GPU memory at batch size 8").all()
    assert all(seen[t][2:] == [["empty_cache"]] for t in big.index)
    assert (trials[trials["batch_size"] == 4]["status"] == "completed").all()
    states = told_to_optuna(half.experiment_dir, read_info(half.experiment_dir), big.index)
    assert sorted(states.values()) == ["FAIL"] * len(big)

    for calls in probes(tmp_path / "results" / "none").values():
        assert ["train", "cpu"] in calls and not any(c[0] == "cap" for c in calls)
