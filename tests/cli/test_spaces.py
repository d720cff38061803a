"""`tune-adapter spaces` and `search --space NAME`: shipped spaces work from any folder."""

import pytest
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.records.results import read_info, read_trials
from tune_adapter.space import SHIPPED_DIR, load_space, probe_space, shipped_spaces


def test_spaces_lists_every_shipped_space_with_its_parameters():
    result = CliRunner().invoke(app, ["spaces"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert shipped_spaces() == ["bench", "default", "finetune", "infinitetalk", "tiny"]
    sections = {block.splitlines()[0]: block for block in result.output.split("\n\n")[:-1]}
    assert list(sections) == shipped_spaces()  # one block per space, its name first
    for name, section in sections.items():
        assert all(param in section for param in probe_space(load_space(name)).params), section
    assert "lr            float   0.0001 .. 0.01    log" in result.output  # default's lr
    assert "flags     NUM_SAMPLES=4  MAX_EPOCHS=3" in result.output  # tiny's constants
    assert "baseline  lr=0.0001  batch_size=2  audio_window=5  vae_scale=4" in result.output
    assert "A small, fast space for tests" in result.output  # the docstring's first line
    lines = result.output.splitlines()
    assert lines[-1] == str(SHIPPED_DIR)  # a path is never folded
    assert all(len(line) <= 80 for line in lines[:-1])


@pytest.mark.slow
def test_search_by_name_from_an_empty_folder(tmp_path, synth_small, monkeypatch, local_ray):
    """After `pip install`, no space file sits in the user's folder: the name alone must do."""
    empty = tmp_path / "anywhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    run = CliRunner().invoke(app, ["search", "--space", "tiny", "--manifest", str(synth_small["train"]),
                                   "--val-manifest", str(synth_small["val"]), "--num-samples", "2",
                                   "--max-epochs", "2", "--storage", "results"])
    assert run.exit_code == 0, run.output
    folder = empty / "results" / "tiny"  # named after the space, as a file's stem names it
    assert len(read_trials(folder)) == 2
    assert read_info(folder).space == "tiny"
