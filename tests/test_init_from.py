"""`--init-from`'s building blocks: every kind of path reads back the exact tensors, a
mismatch is refused or (partial) leaves the right layers fresh, synth's released adapter."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.fakes import OTHER_TENSORS, random_adapter, write_infinitetalk
from tune_adapter import init_from
from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.checkpoint import save_checkpoint
from tune_adapter.errors import ConfigError
from tune_adapter.export import export_adapter
from tune_adapter.init_from import (
    check_initial_adapter,
    load_initial_adapter,
    read_initial_adapter,
)

# The module's searches share one local Ray (conftest.local_ray).
pytestmark = pytest.mark.usefixtures("local_ray")

DIMS = AdapterDims(audio_window=5, vae_scale=4, layers=2, channels=3, intermediate_dim=8,
                   context_tokens=2, output_dim=4)
ALL = ["proj1.weight", "proj1.bias", "proj1_vf.weight", "proj1_vf.bias", "proj2.weight",
       "proj2.bias", "proj3.weight", "proj3.bias", "norm.weight", "norm.bias"]


def assert_same(state: dict, model: AudioProjModel) -> None:
    expected = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def checkpoint(folder, model, epoch=1):
    state = {"epoch": epoch, "step": 3 * epoch, "history": [{"epoch": epoch, "val_l1": 0.5}],
             "config": {}, "dims": model.dims.to_json()}
    return save_checkpoint(folder, model, None, None, state)


def test_infinitetalk_file_reads_only_its_adapter(tmp_path):
    model = random_adapter(DIMS, seed=1)
    path = write_infinitetalk(tmp_path / "infinitetalk.safetensors", model)
    initial = read_initial_adapter(path)
    assert (initial.kind, initial.key_prefix, initial.recorded) == ("infinitetalk", "audio_proj.", None)
    assert_same(initial.state, model)
    assert initial.dims(DIMS.layers, DIMS.channels) == DIMS


def test_infinitetalk_file_never_reads_unrelated_tensors(tmp_path):
    path = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, 1))
    read = []
    real = init_from.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.handle.get_tensor(name)

    with mock.patch.object(init_from, "safe_open", Spy):
        read_initial_adapter(path)
    assert sorted(read) == sorted(f"audio_proj.{k}" for k in ALL)
    assert not set(read) & set(OTHER_TENSORS)


def test_bf16_file_keeps_its_dtype(tmp_path):
    model = random_adapter(DIMS, seed=2)
    path = write_infinitetalk(tmp_path / "w.safetensors", model, dtype=torch.bfloat16)
    initial = read_initial_adapter(path)
    assert all(t.dtype == torch.bfloat16 for t in initial.state.values())
    fresh = load_initial_adapter(target := AudioProjModel(DIMS), initial)
    assert fresh == []
    assert torch.equal(target.proj2.weight, model.proj2.weight.to(torch.bfloat16).float())


def test_export_folder_and_its_weights_file(tmp_path):
    model = random_adapter(DIMS, seed=3)
    out = export_adapter(checkpoint(tmp_path / "ckpt", model), tmp_path / "export", {"note": "x"})
    for path in (out, out / "audio_proj.safetensors"):
        initial = read_initial_adapter(path)
        assert initial.kind == "export" and initial.recorded == DIMS
        assert_same(initial.state, model)
        assert initial.dims() == DIMS  # L and C from the record


def test_checkpoint_output_dir_and_trial_folders(tmp_path):
    older, newer = random_adapter(DIMS, seed=4), random_adapter(DIMS, seed=5)
    run = tmp_path / "run"
    checkpoint(run / "checkpoints" / "epoch_0001", older, 1)
    checkpoint(run / "checkpoints" / "epoch_0002", newer, 2)
    for path, expected in ((run / "checkpoints" / "epoch_0001", older), (run, newer),
                           (run / "checkpoints" / "epoch_0001" / "adapter.safetensors", older)):
        initial = read_initial_adapter(path)
        assert initial.kind == "checkpoint" and initial.recorded == DIMS
        assert_same(initial.state, expected)
    trial = tmp_path / "results" / "exp" / "trial_ab12"
    checkpoint(trial / "checkpoint_000009", older, 9)
    checkpoint(trial / "checkpoint_000010", newer, 10)
    assert_same(read_initial_adapter(trial / "checkpoint_000009").state, older)
    initial = read_initial_adapter(trial)  # the newest, by number
    assert initial.source == trial / "checkpoint_000010"
    assert_same(initial.state, newer)


def refusal(path) -> str:
    with pytest.raises(ConfigError) as caught:
        read_initial_adapter(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--init-from {path}")
    return message


def test_refusals(tmp_path):
    save_file({"patch_embedding.weight": torch.ones(2, 2)}, tmp_path / "dit.safetensors")
    assert "has no audio_proj.* tensors" in refusal(tmp_path / "dit.safetensors")
    (tmp_path / "notes.txt").write_text("not a safetensors file\n" * 10)
    assert "not a readable safetensors file" in refusal(tmp_path / "notes.txt")
    assert "does not exist" in refusal(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    assert "folder without an adapter" in refusal(tmp_path / "empty")
    tensors = {f"audio_proj.{k}": v for k, v in random_adapter(DIMS, 1).state_dict().items()}
    save_file({k: v for k, v in tensors.items() if k != "audio_proj.proj2.bias"}, tmp_path / "short.safetensors")
    assert "audio_proj.proj2.bias is missing" in refusal(tmp_path / "short.safetensors")
    save_file({**tensors, "audio_proj.proj2.bias": torch.zeros(3)}, tmp_path / "odd.safetensors")
    assert "audio_proj.proj2.bias is [3]" in refusal(tmp_path / "odd.safetensors")
    save_file({**tensors, "audio_proj.extra": torch.zeros(3)}, tmp_path / "extra.safetensors")
    assert "audio_proj.extra is not a tensor" in refusal(tmp_path / "extra.safetensors")


def test_export_whose_record_disagrees_is_refused(tmp_path):
    out = export_adapter(checkpoint(tmp_path / "ckpt", random_adapter(DIMS, 1)), tmp_path / "export", {})
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "audio_window": 3}))
    assert "audio_proj.proj1.weight is [8, 30] but the recorded dims need [8, 18]" in refusal(out)


def test_shape_mismatch_refused_naming_both_shapes_and_the_flag(tmp_path):
    path = write_infinitetalk(tmp_path / "infinitetalk.safetensors", random_adapter(DIMS, 1))
    initial = read_initial_adapter(path)
    run = AdapterDims(**{**DIMS.to_json(), "audio_window": 3})
    with pytest.raises(ConfigError) as caught:
        check_initial_adapter(initial, run, partial=False)
    assert str(caught.value) == (
        f"--init-from {path}: audio_proj.proj1.weight is [8, 30], this run's W 3 needs [8, 18]: "
        "use --audio-window 5 as the file has, or add --init-partial")
    cases = [({"intermediate_dim": 16}, "this run's I 16 needs [16, 30]: use --intermediate-dim 8"),
             ({"vae_scale": 2}, "audio_proj.proj1_vf.weight is [8, 48], this run's S 2 needs [8, 36]: "
                                "use --vae-scale 4"),
             ({"norm_output_audio": False}, "audio_proj.norm.weight is [4], this run's norm off has no "
                                            "such tensor: drop --no-norm-output-audio"),
             ({"channels": 4}, "this run's L 2 x C 4 (the data's) needs [8, 40]: use features from"),
             ({"context_tokens": 3}, "audio_proj.proj3.weight is [8, 8], this run's K 3 (the targets') "
                                     "needs [12, 8]: use targets of a teacher with the file's K 2 and D 4")]
    for change, expected in cases:
        with pytest.raises(ConfigError, match="--init-partial$") as caught:
            check_initial_adapter(initial, AdapterDims(**{**DIMS.to_json(), **change}), partial=False)
        assert expected in str(caught.value), (change, str(caught.value))


def test_partial_leaves_the_changed_layers_fresh(tmp_path):
    model = random_adapter(DIMS, seed=6)
    initial = read_initial_adapter(write_infinitetalk(tmp_path / "w.safetensors", model))
    state, fresh = check_initial_adapter(initial, DIMS, partial=False)
    assert fresh == [] and sorted(state) == sorted(ALL)
    run = AdapterDims(**{**DIMS.to_json(), "audio_window": 3})
    state, fresh = check_initial_adapter(initial, run, partial=True)
    assert fresh == ["proj1.weight", "proj1.bias", "proj1_vf.weight", "proj1_vf.bias"]
    assert sorted(state) == sorted(["proj2.weight", "proj2.bias", "proj3.weight", "proj3.bias",
                                    "norm.weight", "norm.bias"])
    target = AudioProjModel(run)
    before = target.proj1.weight.detach().clone()
    assert load_initial_adapter(target, initial, partial=True) == fresh
    assert torch.equal(target.proj1.weight, before)
    for name in state:
        assert torch.equal(target.state_dict()[name], model.state_dict()[name]), name
    # The run turns the norm off: the file's norm has no place and is left out.
    state, fresh = check_initial_adapter(initial, AdapterDims(**{**DIMS.to_json(), "norm_output_audio": False}),
                                         partial=True)
    assert fresh == [] and "norm.weight" not in state


def test_dims_need_l_times_c(tmp_path):
    initial = read_initial_adapter(write_infinitetalk(tmp_path / "w.safetensors", random_adapter(DIMS, 1)))
    assert initial.solve(3, 2) == AdapterDims(**{**DIMS.to_json(), "layers": 3, "channels": 2})
    with pytest.raises(ConfigError, match="W and S need the data's L and C"):
        initial.dims()
    with pytest.raises(ConfigError, match="do not fit L 2 x C 4"):
        initial.dims(2, 4)
    # Without a norm only K*D is stored: D must come from the data.
    model = random_adapter(AdapterDims(**{**DIMS.to_json(), "norm_output_audio": False}), 1)
    bare = read_initial_adapter(write_infinitetalk(tmp_path / "bare.safetensors", model))
    with pytest.raises(ConfigError, match="only K\\*D = 8"):
        bare.dims(2, 3)
    assert bare.dims(2, 3, output_dim=2).context_tokens == 4


def test_synth_writes_a_seeded_released_adapter(synth_small, tmp_path):
    from tune_adapter.synth import RELEASED_NOISE, SynthSpec, make_teacher, released_adapter, write_synth

    spec = SynthSpec(train_clips=12, val_clips=4, min_frames=5, max_frames=30)  # synth_small's
    path = synth_small["released"]
    assert path.name == "infinitetalk.safetensors"
    teacher = make_teacher(spec.adapter_dims(), spec.seed)
    initial = read_initial_adapter(path)
    dims = spec.adapter_dims()
    assert initial.dims(dims.layers, dims.channels) == dims
    expected = released_adapter(teacher, spec.seed)
    assert sorted(initial.state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(initial.state[name], tensor), name
    weight = teacher.proj3.weight.detach()
    relative = (initial.state["proj3.weight"] - weight).std() / weight.std()
    assert abs(float(relative) - RELEASED_NOISE) < 0.05
    stored = load_file(path)
    assert len([k for k in stored if not k.startswith("audio_proj.")]) >= 3
    again = write_synth(tmp_path, SynthSpec(train_clips=2, val_clips=1, min_frames=5, max_frames=6))
    assert again["released"].read_bytes() == path.read_bytes()  # seeded, not clip-dependent


def test_released_start_between_random_init_and_teacher(synth_small):
    from tune_adapter.data import load_data
    from tune_adapter.synth import SynthSpec, make_teacher
    from tune_adapter.trainer import evaluate_pack

    dims = SynthSpec().adapter_dims()
    val = load_data(synth_small["val"], synth_small["val"], pack_dtype="float32").val  # the teacher exactly
    released = AudioProjModel(dims)
    load_initial_adapter(released, read_initial_adapter(synth_small["released"]))
    torch.manual_seed(0)  # the trainer's seeded init
    scratch = AudioProjModel(dims)
    l1 = {name: evaluate_pack(model, val)["val_l1"]
          for name, model in (("teacher", make_teacher(dims, 0)), ("released", released),
                              ("scratch", scratch))}
    assert l1["teacher"] < 1e-4
    assert 0.1 < l1["released"] < 0.6 * l1["scratch"], l1


# --- wired into train and search ------------------------------------------------------

def train_args(data, out, *extra):
    return ["train", "--manifest", str(data["train"]), "--val-manifest", str(data["val"]),
            "--output-dir", str(out), "--batch-size", "4", *extra]


def test_a_start_trained_at_a_vanishing_lr_scores_as_the_file_itself(synth_small, tmp_path):
    """Epoch 0 is the file's adapter evaluated exactly; an epoch at lr 1e-12 leaves it so."""
    from tune_adapter.config import TrainConfig
    from tune_adapter.data import load_data
    from tune_adapter.trainer import evaluate_pack, train

    released = synth_small["released"]
    data = load_data(synth_small["train"], synth_small["val"])
    initial = read_initial_adapter(released)
    model = AudioProjModel(initial.dims(data.train.shapes.layers, data.train.shapes.channels))
    load_initial_adapter(model, initial)
    direct = evaluate_pack(model, data.val, batch_size=4)
    result = train(TrainConfig(lr=1e-12, epochs=1, batch_size=4, device="cpu",
                               init_from=str(released)), data)
    start, first = result.history
    assert start["epoch"] == 0 and start["val_l1"] == direct["val_l1"]
    assert first["val_l1"] == pytest.approx(direct["val_l1"], rel=1e-6)


def test_train_from_the_released_file_and_partial_start(synth_small, tmp_path):
    from typer.testing import CliRunner

    from tune_adapter.cli import app

    released = str(synth_small["released"])
    result = CliRunner().invoke(app, train_args(synth_small, tmp_path / "a", "--epochs", "1",
                                                "--init-from", released))
    assert result.exit_code == 0, result.output
    assert "(infinitetalk)" in result.output and "start fresh" not in result.output
    # Same shapes as the file it came from: merged back without --allow-config-change.
    merged = CliRunner().invoke(app, ["export", "--checkpoint", str(tmp_path / "a"), "--out",
                                      str(tmp_path / "ex"), "--merge-into", released])
    assert merged.exit_code == 0, merged.output
    assert set(load_file(tmp_path / "ex" / "infinitetalk.safetensors")) == set(load_file(released))
    result = CliRunner().invoke(app, train_args(synth_small, tmp_path / "b", "--epochs", "1",
                                                "--audio-window", "3", "--init-from", released,
                                                "--init-partial"))
    assert result.exit_code == 0, result.output
    assert "proj1, proj1_vf start fresh (--init-partial)" in result.output


@pytest.mark.parametrize("case", ["no adapter", "shape"])
def test_train_refuses_a_bad_start_in_one_line_writing_nothing(synth_small, tmp_path, case):
    from typer.testing import CliRunner

    from tune_adapter.cli import app

    if case == "no adapter":
        path = tmp_path / "other.safetensors"
        save_file({"blocks.0.weight": torch.ones(2)}, path)
        flags = ["--init-from", str(path)]
    else:
        flags = ["--init-from", str(synth_small["released"]), "--audio-window", "3"]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, train_args(synth_small, out, "--epochs", "1", *flags))
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--init-from" in error[0] and "Traceback" not in result.output
    if case == "shape":
        assert "audio_proj.proj1.weight is [" in error[0] and "--init-partial" in error[0]
    assert not out.exists()


def test_a_search_whose_space_varies_w_is_refused_before_ray(synth_small, tmp_path):
    from typer.testing import CliRunner

    from tune_adapter.cli import app

    space = tmp_path / "space.py"
    space.write_text("def space(trial):\n"
                     "    return {'audio_window': trial.suggest_int('audio_window', 3, 5, step=2)}\n")
    result = CliRunner().invoke(app, [
        "search", "--space", str(space), "--manifest", str(synth_small["train"]),
        "--val-manifest", str(synth_small["val"]), "--storage", str(tmp_path / "results"),
        "--init-from", str(synth_small["released"])])
    assert result.exit_code == 2, result.output
    assert "the space sets audio_window to 3, 5, but the adapter's W is 5" in result.output
    assert not (tmp_path / "results" / "space").exists()


@pytest.mark.slow
def test_a_search_from_a_file_starts_every_trial_there(synth_small, tmp_path):
    from tune_adapter.records.results import read_epochs, read_trials
    from tune_adapter.search import run_search

    space = tmp_path / "space.py"
    space.write_text("INIT_FROM = %r\n" % str(synth_small["released"])
                     + "def space(trial):\n"
                     "    return {'lr': trial.suggest_float('lr', 1e-4, 1e-3, log=True), 'batch_size': 4}\n")
    from tune_adapter.search.options import resolve_options
    from tune_adapter.space import load_space

    options = resolve_options(load_space(space).defaults, space=space, manifest=synth_small["train"],
                              val_manifest=synth_small["val"], storage=tmp_path / "results",
                              num_samples=2, max_epochs=2, quiet=True)
    assert str(options.init_from) == str(synth_small["released"])
    folder = run_search(options).experiment_dir
    trials, epochs = read_trials(folder), read_epochs(folder)
    starts = epochs[epochs["epoch"] == 0]
    assert len(starts) == 2 and starts["val_l1"].nunique() == 1  # the same start for all
    assert (trials["start_val_l1"] == starts["val_l1"].iloc[0]).all()
    assert (trials["best_val_l1"] < trials["start_val_l1"]).all()
    # TensorBoard: step 0 of every trial's val_l1 curve is its start.
    for trial_id in trials["trial_id"]:
        (trial_dir,) = folder.glob(f"trial_{trial_id}*")
        steps = scalars(trial_dir, "ray/tune/val_l1")
        assert steps[0] == pytest.approx(starts["val_l1"].iloc[0], rel=1e-6) and 1 in steps
    # confirm reruns the search's trials as they ran: from the same start, not from scratch.
    from tune_adapter.records.confirmation import read_confirm_epochs
    from tune_adapter.search.confirm import ConfirmOptions, run_confirm

    run_confirm(ConfirmOptions(experiment=folder, top=1, seeds=1, epochs=1, quiet=True))
    confirm_starts = read_confirm_epochs(folder).query("epoch == 0")["val_l1"]
    assert len(confirm_starts) and confirm_starts.to_numpy() == pytest.approx(starts["val_l1"].iloc[0], rel=1e-6)


def scalars(folder, tag: str) -> dict[int, float]:
    """step -> value of a tag in a folder's TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found = {}
    for path in folder.glob("events.out.tfevents*"):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            found.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
    return found
