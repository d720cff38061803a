import json

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
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5]
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
