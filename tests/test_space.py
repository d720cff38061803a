"""Space files: loading, flag defaults, the probe that refuses bad spaces, and pruned trials."""

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.errors import ConfigError
from tune_adapter.search import SearchOptions, resolve_options
from tune_adapter.space import (SHIPPED_DIR, check_baseline, check_space, load_space, module_name_for,
                                probe_space, space_path)


def space_file(tmp_path, body, constants=""):
    path = tmp_path / "space.py"
    path.write_text(f"{constants}\n\ndef space(trial):\n    return {body}\n")
    return path


@pytest.mark.parametrize("name", ["default", "infinitetalk", "tiny"])
def test_shipped_spaces_pass_the_probe(name):
    space = load_space(SHIPPED_DIR / f"{name}.py")
    probed = probe_space(space)
    check_space(probed, space, None)
    check_baseline(probed, space)
    assert {"lr", "batch_size", "audio_window"} <= set(probed.params)
    assert space.module_name in sys.modules  # so OptunaSearch can pickle space by reference


def test_infinitetalk_space_fits_per_latent_targets_at_scale_4():
    space = load_space(SHIPPED_DIR / "infinitetalk.py")
    check_space(probe_space(space), space, [4])
    default = load_space(SHIPPED_DIR / "default.py")
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


@pytest.mark.parametrize("name,value", [
    ("audio_window", 4), ("vae_scale", 1), ("lr", 0.0), ("lr", float("inf")), ("batch_size", 0),
    ("weight_decay", -0.1), ("grad_clip", -1.0), ("loss", "huber"), ("intermediate_dim", 0),
])
def test_the_config_and_the_space_probe_refuse_alike(tmp_path, name, value):
    """One set of range rules: the flag and the space parameter get the same reason and fix."""
    from tune_adapter.config import TrainConfig

    with pytest.raises(ConfigError) as by_config:
        TrainConfig(**{name: value})
    space = load_space(space_file(tmp_path, f"{{{name!r}: {value!r}}}".replace("inf", 'float("inf")')))
    with pytest.raises(ConfigError) as by_probe:
        check_space(probe_space(space), space, None)
    flag = "--" + name.replace("_", "-")
    assert str(by_config.value).startswith(f"{flag} is {value!r}: it must be ")
    assert f"can sample {name}={value!r}: it must be " in str(by_probe.value)
    reason = str(by_config.value).split(": ", 1)[1]
    assert str(by_probe.value).endswith(": " + reason) and "\n" not in reason


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
    opts = resolve_options(space.defaults, space=space.path, num_samples=None, max_epochs=2, seed=None)
    assert (opts.num_samples, opts.max_epochs, opts.grace_period) == (7, 2, 1)
    assert opts.seed == SearchOptions.seed  # neither flag nor constant: SearchOptions' default


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


def test_a_bare_name_is_a_shipped_space_anything_else_a_path():
    assert space_path("tiny") == SHIPPED_DIR / "tiny.py" and load_space("tiny").path == SHIPPED_DIR / "tiny.py"
    assert load_space("tiny").path.stem == "tiny"  # the experiment's name, as for a file
    for value in ("tiny.py", "./tiny", "spaces/tiny.py"):
        assert space_path(value) == Path(value)


def test_an_unknown_space_name_is_refused_in_one_line():
    result = CliRunner().invoke(app, ["search", "--space", "defualt"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --space defualt")
    assert "bench, default, finetune, infinitetalk, tiny" in result.stderr and "path" in result.stderr


def test_a_path_named_like_a_shipped_space_is_the_local_file(tmp_path, monkeypatch, synth_small):
    monkeypatch.chdir(tmp_path)
    local = (SHIPPED_DIR / "tiny.py").read_text().replace('"audio_window", 3, 5', '"audio_window", 2, 4')
    Path("tiny.py").write_text(local)
    result = CliRunner().invoke(app, ["search", "--space", "tiny.py", "--manifest", str(synth_small["train"])])
    assert result.exit_code == 2 and "--space tiny.py can sample audio_window=2" in result.stderr


def test_a_shipped_space_keeps_its_module_name_wherever_the_package_is(tmp_path, monkeypatch):
    """OptunaSearch pickles space() by module name: a resume after a reinstall must find it."""
    import tune_adapter.space as space_module

    name = module_name_for(SHIPPED_DIR / "tiny.py")
    (tmp_path / "tiny.py").write_text((SHIPPED_DIR / "tiny.py").read_text())
    assert module_name_for(tmp_path / "tiny.py") != name  # another file of the same name
    monkeypatch.setattr(space_module, "SHIPPED_DIR", tmp_path)
    assert module_name_for(tmp_path / "tiny.py") == name


@pytest.mark.parametrize("baseline, needle", [
    ('{"lr": 1e-3, "momentum": 0.9}', "does not suggest"),
    ('{"lr": 1.0}', "outside its distribution"),
    ('{"audio_window": 4}', "outside its distribution"),
    ('[1e-3]', "make it a dict"),
])
def test_a_bad_baseline_is_refused(tmp_path, baseline, needle):
    body = '{"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True), "audio_window": trial.suggest_int("audio_window", 3, 7, step=2)}'
    path = space_file(tmp_path, body, constants=f"BASELINE = {baseline}")
    with pytest.raises(ConfigError, match=needle):
        space = load_space(path)
        check_baseline(probe_space(space), space)


def test_the_shipped_spaces_are_the_files_of_the_top_level_search_spaces_folder(monkeypatch):
    """The design card's `--space search_spaces/default.py` opens the file that is there."""
    from tune_adapter.space import SHIPPED_DIR, load_space

    root = Path(__file__).resolve().parents[1]
    assert SHIPPED_DIR == root / "search_spaces"
    monkeypatch.chdir(root)
    loaded = load_space("search_spaces/default.py")
    assert loaded.path.resolve() == root / "search_spaces" / "default.py" and loaded.shipped_name == "default"
    assert loaded.module_name == load_space("default").module_name  # one space, one pickled name


def test_a_mistyped_space_path_is_refused_not_replaced_by_a_shipped_one(tmp_path):
    from tune_adapter.space import load_space

    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "search_spaces" / "tiny.py")


def test_an_experiment_records_a_shipped_space_by_name_and_reads_its_old_installed_path_as_one():
    from tune_adapter.space import load_space, recorded_space

    assert load_space("tiny").recorded_as == "tiny"
    assert recorded_space("/venv/lib/python3.11/site-packages/tune_adapter/search_spaces/tiny.py") == "tiny"
    assert recorded_space("/home/me/search_spaces/tiny.py") == "/home/me/search_spaces/tiny.py"
