"""Space files: loading, flag defaults, the probe that refuses bad spaces, and pruned trials."""

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.errors import ConfigError
from tune_adapter.search import resolve_options
from tune_adapter.space import check_space, load_space, probe_space

ROOT = Path(__file__).resolve().parents[1]


def space_file(tmp_path, body, constants=""):
    path = tmp_path / "space.py"
    path.write_text(f"{constants}\n\ndef space(trial):\n    return {body}\n")
    return path


@pytest.mark.parametrize("name", ["default", "infinitetalk", "tiny"])
def test_shipped_spaces_pass_the_probe(name):
    space = load_space(ROOT / "search_spaces" / f"{name}.py")
    probed = probe_space(space)
    check_space(probed, space, None)
    assert {"lr", "batch_size", "audio_window"} <= set(probed.params)
    assert space.module_name in sys.modules  # so OptunaSearch can pickle space by reference


def test_infinitetalk_space_fits_per_latent_targets_at_scale_4():
    space = load_space(ROOT / "search_spaces" / "infinitetalk.py")
    check_space(probe_space(space), space, [4])
    default = load_space(ROOT / "search_spaces" / "default.py")
    with pytest.raises(ConfigError, match="vae_scale=2.*fit only vae-scale 4"):
        check_space(probe_space(default), default, [4])


@pytest.mark.parametrize("body,needle", [
    ('{"audio_window": trial.suggest_int("audio_window", 3, 8)}', "audio_window=4"),
    ('{"audio_window": trial.suggest_categorical("audio_window", [3, 5, 6])}', "audio_window=6"),
    ('{"vae_scale": trial.suggest_int("vae_scale", 1, 4)}', "vae_scale=1"),
    ('{"lr": trial.suggest_float("lr", 0.0, 1e-2)}', "lr=0.0"),
    ('{"batch_size": trial.suggest_categorical("batch_size", [0, 4])}', "batch_size=0"),
    ('{"lr": 1e-3, "dropout": 0.1}', "'dropout' is not a training option"),
])
def test_bad_spaces_are_refused_before_any_trial(tmp_path, body, needle):
    space = load_space(space_file(tmp_path, body))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        check_space(probe_space(space), space, None)


def test_a_branch_taken_only_sometimes_is_probed(tmp_path):
    body = ('{"audio_window": trial.suggest_int("w_big", 5, 9, step=2) '
            'if trial.suggest_categorical("big", [False, True]) else 3}')
    space = load_space(space_file(tmp_path, body))
    check_space(probe_space(space), space, None)
    (tmp_path / "b").mkdir()
    bad = load_space(space_file(tmp_path / "b", body.replace("step=2", "step=1")))
    with pytest.raises(ConfigError, match="audio_window=6"):
        check_space(probe_space(bad), bad, None)


def test_constants_give_flag_defaults_and_flags_win(tmp_path):
    space = load_space(space_file(tmp_path, '{"lr": 1e-3}', "NUM_SAMPLES = 7\nMAX_EPOCHS = 4"))
    opts = resolve_options(space.defaults, space=space.path, num_samples=None, max_epochs=2)
    assert (opts.num_samples, opts.max_epochs, opts.grace_period) == (7, 2, 1)


def test_search_cli_refuses_a_bad_space_without_starting_ray(tmp_path, synth_small):
    path = space_file(tmp_path, '{"audio_window": trial.suggest_int("audio_window", 2, 4)}')
    result = CliRunner().invoke(app, ["search", "--space", str(path), "--manifest", str(synth_small["train"]),
                                      "--storage", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --space") and "audio_window=2" in result.stderr
    assert not (tmp_path / "results" / "space").exists()


def test_missing_space_file(tmp_path):
    result = CliRunner().invoke(app, ["search", "--space", str(tmp_path / "nope.py")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_pruned_trials_reach_optuna_as_pruned():
    from optuna.trial import TrialState

    from tune_adapter.search.optuna_pruned import PrunedAwareOptunaSearch

    space = load_space(ROOT / "search_spaces" / "tiny.py")
    searcher = PrunedAwareOptunaSearch(space=space.function, metric="val_l1", mode="min", seed=0,
                                       max_epochs=3)
    for trial_id, epochs in (("a", 1), ("b", 3), ("c", 2)):
        assert searcher.suggest(trial_id) is not None
        for epoch in range(1, epochs + 1):
            searcher.on_trial_result(trial_id, {"val_l1": 1.0 / epoch, "epoch": epoch,
                                                "training_iteration": epoch})
        searcher.on_trial_complete(trial_id, {"val_l1": 1.0 / epochs, "epoch": epochs})
    searcher.suggest("d")
    searcher.on_trial_complete("d", None, error=True)
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert searcher._ot_study.trials[1].value == pytest.approx(1 / 3)
