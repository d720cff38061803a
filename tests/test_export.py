import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.support.fakes import METADATA, OTHER_TENSORS, random_adapter, write_infinitetalk
from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.checkpoint import save_checkpoint
from tune_adapter.cli import app
from tune_adapter.errors import ConfigError
from tune_adapter.export import export_adapter, load_exported, merge_into
from tune_adapter.st_file import read_layout
from tune_adapter.windows import WindowSpec, clip_inputs

DIMS = AdapterDims(layers=2, channels=8, intermediate_dim=16, context_tokens=3, output_dim=6)
runner = CliRunner()


def make_checkpoint(folder, dims=DIMS, seed=1):
    model = random_adapter(dims, seed)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(folder, model, optimizer, None, {"epoch": 3, "dims": dims.to_json(), "history": []})
    return model


def raw_tensor_bytes(path):
    """name -> the exact bytes stored for it."""
    layout = read_layout(path)
    data = path.read_bytes()[layout.data_start:]
    return {e.name: data[e.start:e.end] for e in layout.entries}


def outputs(model, frames=23, seed=0):
    spec = WindowSpec(model.dims.audio_window, model.dims.vae_scale)
    audio = torch.randn(frames, model.dims.layers, model.dims.channels, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(*clip_inputs(audio, spec))


def test_export_reloads_strictly_and_reproduces_outputs(tmp_path):
    trained = make_checkpoint(tmp_path / "ckpt")
    out = export_adapter(tmp_path / "ckpt", tmp_path / "export", {"trial_id": "t7", "metrics": {"val_l1": 0.25}})
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trial_id"] == "t7" and config["metrics"] == {"val_l1": 0.25}
    assert {k: config[k] for k in DIMS.to_json()} == DIMS.to_json()
    keys = set(load_file(out / "audio_proj.safetensors"))
    assert keys == {f"audio_proj.{k}" for k in trained.state_dict()}
    reloaded = load_exported(out)
    assert reloaded.dims == DIMS
    assert torch.equal(outputs(reloaded.eval()), outputs(trained))


def test_strict_load_refuses_a_config_that_does_not_fit(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    out = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "norm_output_audio": False}))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_exported(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_replaces_audio_proj_and_keeps_every_other_byte(tmp_path, dtype):
    make_checkpoint(tmp_path / "ckpt")
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9), dtype)
    merged = tmp_path / "merged.safetensors"
    messages = merge_into(export, target, merged)
    before, after = raw_tensor_bytes(target), raw_tensor_bytes(merged)
    assert set(before) == set(after)
    for name in OTHER_TENSORS:
        assert after[name] == before[name]
    exported = load_file(export / "audio_proj.safetensors")
    with safe_open(merged, framework="pt") as f:
        assert f.metadata() == METADATA
        for name, tensor in exported.items():
            assert f.get_tensor(name).dtype == dtype
            assert torch.equal(f.get_tensor(name), tensor.to(dtype))
            assert after[name] != before[name]
    # Same shapes and dtypes: the header is kept verbatim, so is the file's size.
    assert merged.stat().st_size == target.stat().st_size
    assert read_layout(merged).header == read_layout(target).header
    assert not [m for m in messages if "warning" in m]
    assert any("bfloat16" in m for m in messages) == (dtype == torch.bfloat16)


def test_merge_refuses_a_window_change_naming_tensor_and_shapes(tmp_path):
    make_checkpoint(tmp_path / "ckpt", AdapterDims(**{**DIMS.to_json(), "audio_window": 3}))
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9))
    merged = tmp_path / "merged.safetensors"
    with pytest.raises(ConfigError) as caught:
        merge_into(export, target, merged)
    message = str(caught.value)
    assert "audio_proj.proj1.weight" in message and "[16, 80]" in message and "[16, 48]" in message
    assert "--allow-config-change" in message and "\n" not in message
    assert not merged.exists()


def test_allow_config_change_writes_the_merge_and_the_config_it_needs(tmp_path):
    changed = AdapterDims(**{**DIMS.to_json(), "audio_window": 3, "vae_scale": 2})
    make_checkpoint(tmp_path / "ckpt", changed)
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9))
    merged = tmp_path / "merged.safetensors"
    messages = merge_into(export, target, merged, allow_config_change=True)
    assert any("audio window W is 3" in m and "implies 5" in m for m in messages)
    assert any("vae scale S is 2" in m and "implies 4" in m for m in messages)
    note = json.loads((tmp_path / "merged.infinitetalk_config.json").read_text())
    assert note["add_to_ckpt_dir_config_json"]["audio_window"] == 3
    assert note["differs_from_target_file"] == {"audio_window": 3, "vae_scale": 2}
    before, after = raw_tensor_bytes(target), raw_tensor_bytes(merged)
    for name in OTHER_TENSORS:
        assert after[name] == before[name]
    tensors = load_file(merged)
    model = AudioProjModel(changed)
    model.load_state_dict({k.removeprefix("audio_proj."): v for k, v in tensors.items()
                           if k.startswith("audio_proj.")}, strict=True)
    assert torch.equal(outputs(model.eval()), outputs(load_exported(export).eval()))
    # Every tensor starts at a multiple of its element size.
    layout = read_layout(merged)
    assert layout.data_start % 8 == 0
    assert all(e.start % torch.empty(0, dtype=OTHER_TENSORS[e.name][1]).element_size() == 0
               for e in layout.entries if e.name in OTHER_TENSORS)


def test_merge_refuses_to_overwrite_its_source(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9))
    with pytest.raises(ConfigError, match="overwrite"):
        merge_into(export, target, target)


def test_merge_refuses_a_file_without_audio_proj(tmp_path):
    from safetensors.torch import save_file

    make_checkpoint(tmp_path / "ckpt")
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="no audio_proj"):
        merge_into(export, tmp_path / "other.safetensors", tmp_path / "m.safetensors")


@pytest.mark.slow
def test_cli_export_of_a_training_run_and_merge(tmp_path, synth_small):
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--manifest", str(synth_small["train"]), "--output-dir", str(run),
                                  "--epochs", "1", "--intermediate-dim", "16"])
    assert trained.exit_code == 0, trained.output
    dims = AdapterDims.from_json(json.loads(next(run.glob("checkpoints/*/state.json")).read_text())["dims"])
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(dims, seed=9))
    result = runner.invoke(app, ["export", "--checkpoint", str(run), "--out", str(tmp_path / "out"),
                                 "--merge-into", str(target)])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "out" / "infinitetalk.safetensors"
    assert "merged" in result.output and merged.is_file()
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["epoch"] == 1 and "val_l1" in config["metrics"]
    exported = load_file(tmp_path / "out" / "audio_proj.safetensors")
    merged_tensors = load_file(merged)
    assert all(torch.equal(merged_tensors[k], v) for k, v in exported.items())


def test_cli_export_refusal_is_one_line(tmp_path):
    make_checkpoint(tmp_path / "ckpt", AdapterDims(**{**DIMS.to_json(), "audio_window": 3}))
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9))
    args = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
            "--merge-into", str(target)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and "audio_proj.proj1.weight" in refused.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    allowed = runner.invoke(app, [*args, "--allow-config-change"])
    assert allowed.exit_code == 0, allowed.output
    assert "infinitetalk_config.json" in allowed.output
    assert (tmp_path / "out" / "infinitetalk.infinitetalk_config.json").is_file()


def test_header_is_padded_to_eight_bytes(tmp_path):
    make_checkpoint(tmp_path / "ckpt", AdapterDims(**{**DIMS.to_json(), "audio_window": 3}))
    export = export_adapter(tmp_path / "ckpt", tmp_path / "export", {})
    target = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, seed=9))
    merge_into(export, target, tmp_path / "m.safetensors", allow_config_change=True)
    with open(tmp_path / "m.safetensors", "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
    assert size % 8 == 0


def write_search(folder, trials: dict[str, tuple[list[float], set[int]]]):
    """A search's records as TrialStore writes them: per trial, val_l1 by epoch (from 1) and
    the epochs whose checkpoint Tune still keeps (each a real checkpoint, its own adapter)."""
    from tune_adapter.records.results import ExperimentInfo, TrialStore

    store = TrialStore(folder, ExperimentInfo(name="x", params=["lr"], max_epochs=4, num_samples=len(trials)))
    for seed, (trial_id, (val_l1, kept)) in enumerate(trials.items()):
        for epoch, value in enumerate(val_l1, start=1):
            metrics = {"epoch": epoch, "val_l1": value, "val_mse": value, "val_cos": 0.5,
                       "train_loss": value, "epoch_seconds": 1.0, "step": epoch}
            store.record_epoch(trial_id, {"lr": 1e-3}, metrics, wall_seconds=epoch)
            if epoch in kept:
                checkpoint = folder / f"trial_{trial_id}" / f"checkpoint_{epoch:06d}"
                make_checkpoint(checkpoint, seed=seed)
                store.record_checkpoint(trial_id, epoch, str(checkpoint))
        store.record_end(trial_id, {"lr": 1e-3}, "completed" if len(val_l1) == 4 else "pruned")


def test_best_export_takes_each_trials_best_checkpointed_epoch(tmp_path):
    """--checkpoint-every 2: trial a's best epoch (3) has no checkpoint, but its epoch 4 still
    beats trial b's best; the export is a's epoch 4, and says so."""
    folder = tmp_path / "x"
    write_search(folder, {"a": ([0.5, 0.3, 0.1, 0.12], {4}), "b": ([0.3, 0.15], {2})})
    result = runner.invoke(app, ["best", "--experiment", str(folder), "--export", str(tmp_path / "out")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "exporting trial a at epoch 4, val_l1 0.1200 (its best epoch, 3, has no checkpoint)" in result.output
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert (config["trial_id"], config["epoch"], config["best_epoch"]) == ("a", 4, 3)
    assert config["metrics"]["val_l1"] == pytest.approx(0.12)
    exported = load_exported(tmp_path / "out").state_dict()
    saved = load_file(folder / "trial_a" / "checkpoint_000004" / "adapter.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in saved.items())


def test_best_export_with_no_checkpoint_at_any_trials_best_epoch(tmp_path):
    folder = tmp_path / "x"
    write_search(folder, {"a": ([0.5, 0.3, 0.1, 0.12], {4})})
    result = runner.invoke(app, ["best", "--experiment", str(folder), "--export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["epoch"] == 4


def test_best_export_alone_exports_to_the_experiments_own_folder(tmp_path):
    """The design card's exact command, `tune-adapter best --export`, with no folder."""
    folder = tmp_path / "x"
    write_search(folder, {"a": ([0.5, 0.3, 0.1, 0.12], {3, 4})})
    for args in (["--export"], ["--export", "--top", "2"]):
        result = runner.invoke(app, ["best", "--experiment", str(folder), *args], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        assert f"-> {folder / 'export'}" in result.output
        assert json.loads((folder / "export" / "adapter_config.json").read_text())["epoch"] == 3
