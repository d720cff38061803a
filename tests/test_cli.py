import json

import pytest
from typer.testing import CliRunner

from tune_adapter.cli import app

runner = CliRunner()


def test_seed_guide_command_trains_on_a_synth_dataset(tmp_path):
    data = tmp_path / "data"
    made = runner.invoke(app, ["synth", "--out", str(data), "--train-clips", "12", "--val-clips", "4",
                               "--max-frames", "30"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "outputs" / "audio_adapter"
    # The command from TRAINING_AUDIO_ADAPTER.md, flag for flag.
    result = runner.invoke(app, [
        "train", "--manifest", str(data / "train.json"), "--output-dir", str(out),
        "--batch-size", "2", "--epochs", "5", "--lr", "1e-4", "--mixed-precision",
    ])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Epoch 0 is the starting point, validated before the first step; no checkpoint.
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3, 4, 5]
    assert lines[0]["checkpoint"] is None and lines[0]["val_l1"] > 0
    assert result.output.index("epoch 0 (the start)") < result.output.index("epoch 1")
    assert "epoch 5" in result.output and "val_l1" in result.output
    assert (out / "checkpoints" / "epoch_0005" / "adapter.safetensors").is_file()


def test_every_flag_of_the_guide_is_accepted(tmp_path, synth_small):
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "train", "--manifest", str(synth_small["train"]), "--val-manifest", str(synth_small["val"]),
        "--output-dir", str(out), "--batch-size", "3", "--epochs", "2", "--lr", "1e-3",
        "--audio-window", "3", "--vae-scale", "4", "--device", "cpu", "--weight-decay", "0",
        "--num-workers", "0", "--save-every", "2", "--log-every", "1", "--context-tokens", "4",
        "--output-dim", "16", "--intermediate-dim", "16", "--no-norm-output-audio",
        "--loss", "mse", "--seed", "3",
    ])
    assert result.exit_code == 0, result.output
    state = json.loads((out / "checkpoints" / "epoch_0002" / "state.json").read_text())
    assert state["dims"]["audio_window"] == 3 and state["dims"]["norm_output_audio"] is False
    assert state["config"]["loss"] == "mse"
    # --save-every 2: epoch 1 was not saved.
    assert not (out / "checkpoints" / "epoch_0001").exists()


@pytest.mark.slow
def test_resume_from_an_output_dir(tmp_path, synth_small):
    out = tmp_path / "out"
    base = ["train", "--manifest", str(synth_small["train"]), "--output-dir", str(out), "--lr", "1e-3"]
    assert runner.invoke(app, [*base, "--epochs", "2"]).exit_code == 0
    result = runner.invoke(app, [*base, "--epochs", "3", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert "epoch 3" in result.output and "epoch 1 " not in result.output


def test_check_summarises(synth_small):
    result = runner.invoke(app, ["check", str(synth_small["train"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("clips", "12", "per frame", "2 x 16", "4 x 16", "h at 25 fps"):
        assert text in result.output


def test_check_names_the_scales_of_latent_targets(synth_latent):
    result = runner.invoke(app, ["check", str(synth_latent["train"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "per latent" in result.output and "vae-scale 4" in result.output


def test_synth_refuses_to_overwrite(tmp_path, synth_small):
    result = runner.invoke(app, ["synth", "--out", str(synth_small["train"].parent)])
    assert result.exit_code == 2 and "already holds" in result.stderr


def test_every_train_config_field_is_a_train_flag_with_its_default():
    from dataclasses import MISSING, fields

    import typer.main

    from tune_adapter.config import TrainConfig

    flags = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    for f in fields(TrainConfig):
        if not f.metadata.get("flag", True):
            assert f.name not in flags, f.name
            continue
        assert f.name in flags, f"TrainConfig.{f.name} is not a train flag"
        flag = flags[f.name]
        assert flag.opts[0] == "--" + f.name.replace("_", "-")
        assert flag.default == (None if f.default is MISSING else f.default), f.name
        assert flag.help == f.metadata.get("help")


def test_a_new_config_field_becomes_a_flag_without_a_cli_change():
    from dataclasses import dataclass

    import typer

    from tune_adapter.cli.config_flags import config_flags
    from tune_adapter.config import TrainConfig, option

    @dataclass(frozen=True)
    class Extended(TrainConfig):
        cpu_tuning: bool = option(False, "Tune the CPU")
        threads: int = 3

    seen = {}
    other = typer.Typer()

    @other.command()
    @config_flags(Extended)
    def run(*, config: Extended, name: str = "x"):
        seen.update(config=config, name=name)

    result = runner.invoke(other, ["--cpu-tuning", "--threads", "5", "--lr", "0.5", "--name", "y"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == Extended(cpu_tuning=True, threads=5, lr=0.5) and seen["name"] == "y"
    assert "Tune the CPU" in runner.invoke(other, ["--help"]).output


def test_an_out_of_range_flag_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["train", "--manifest", str(tmp_path / "m.json"), "--output-dir",
                                 str(tmp_path / "out"), "--audio-window", "4"])
    assert result.exit_code == 2
    assert result.stderr == ("error: --audio-window is 4: it must be an odd integer >= 1 "
                             "(it needs a centre frame), e.g. 5\n")
