"""Every bad input: one line naming the entry and the fix, exit 2, no traceback, nothing written."""

import math
import os
import subprocess
import sys

import pytest
import torch
from tests.support.clips import write_clip, write_manifest
from typer.testing import CliRunner

from tune_adapter.cli import app

L, C, K, D = 2, 3, 4, 5


class Exploit:
    """A pickle that runs code when loaded without weights_only=True."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def good_clip(folder, name, frames=9, layers=L, channels=C, tokens=K, dim=D, rows=None):
    audio = torch.randn(frames, layers, channels)
    target = torch.randn(frames if rows is None else rows, tokens, dim)
    return write_clip(folder, name, audio, target)


def run_train(manifest, tmp_path, *extra):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["train", "--manifest", str(manifest), "--output-dir", str(out), "--epochs", "1", *extra]
    )
    return result, out


def assert_refused(result, out, tmp_path, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def case_missing(tmp):
    return tmp / "nope.json", ["nope.json", "does not exist"]


def case_not_json(tmp):
    return write_manifest(tmp, "[{'audio': 1,"), ["not JSON"]


def case_not_list(tmp):
    return write_manifest(tmp, {"audio": "a.pt"}), ["not a list"]


def case_empty(tmp):
    return write_manifest(tmp, []), ["empty"]


def case_not_object(tmp):
    return write_manifest(tmp, [good_clip(tmp, "a"), "b.pt"]), ["entry 1", "not an object"]


def case_no_audio(tmp):
    return write_manifest(tmp, [{"target": good_clip(tmp, "a")["target"]}]), ["entry 0", '"audio"']


def case_no_target(tmp):
    return write_manifest(tmp, [good_clip(tmp, "a"), {"audio": "a_audio.pt"}]), ["entry 1", '"target"']


def case_file_missing(tmp):
    entry = {**good_clip(tmp, "a"), "target": "gone.pt"}
    return write_manifest(tmp, [entry]), ["entry 0", "gone.pt", "does not exist"]


def case_not_a_tensor_file(tmp):
    entry = good_clip(tmp, "a")
    (tmp / "a_audio.pt").write_bytes(b"RIFF....WAVEfmt not a tensor")
    return write_manifest(tmp, [entry]), ["entry 0", "a_audio.pt", "cannot be read as a tensor"]


def case_refused_pickle(tmp):
    entry = good_clip(tmp, "a")
    torch.save(Exploit(str(tmp / "pwned")), tmp / "a_tokens.pt")
    return write_manifest(tmp, [entry]), ["entry 0", "a_tokens.pt", "not a plain tensor file", "posix.mkdir"]


def case_dict_not_tensor(tmp):
    entry = good_clip(tmp, "a")
    torch.save({"audio": torch.randn(9, L, C)}, tmp / "a_audio.pt")
    return write_manifest(tmp, [entry]), ["entry 0", "holds a dict, not a tensor"]


def case_wrong_rank(tmp):
    entry = write_clip(tmp, "a", torch.randn(9, L * C), torch.randn(9, K, D))
    return write_manifest(tmp, [entry]), ["entry 0", "rank 2", "[T, L, C]"]


def case_layers_differ(tmp):
    entries = [good_clip(tmp, "a"), good_clip(tmp, "b", layers=L + 1)]
    return write_manifest(tmp, entries), ["entry 1", f"L={L + 1}", "same wav2vec2"]


def case_channels_differ(tmp):
    entries = [good_clip(tmp, "a"), good_clip(tmp, "b", channels=C + 1)]
    return write_manifest(tmp, entries), ["entry 1", f"C={C + 1}"]


def case_tokens_differ(tmp):
    entries = [good_clip(tmp, "a"), good_clip(tmp, "b", tokens=K + 1)]
    return write_manifest(tmp, entries), ["entry 1", f"K={K + 1}", "same teacher"]


def case_dim_differs(tmp):
    entries = [good_clip(tmp, "a"), good_clip(tmp, "b", dim=D + 1)]
    return write_manifest(tmp, entries), ["entry 1", f"D={D + 1}"]


def case_nan(tmp):
    audio = torch.randn(9, L, C)
    audio[3, 1, 2] = float("nan")
    entry = write_clip(tmp, "a", audio, torch.randn(9, K, D))
    return write_manifest(tmp, [good_clip(tmp, "b"), entry]), ["entry 1", "NaN or Inf"]


def case_inf(tmp):
    target = torch.randn(9, K, D)
    target[0, 0, 0] = float("inf")
    entry = write_clip(tmp, "a", torch.randn(9, L, C), target)
    return write_manifest(tmp, [entry]), ["entry 0", "a_tokens.pt", "NaN or Inf"]


def case_weight_negative(tmp):
    return write_manifest(tmp, [{**good_clip(tmp, "a"), "weight": -1}]), ["entry 0", '"weight"', ">= 0"]


def case_weight_nan(tmp):
    text = '[{"audio": "a_audio.pt", "target": "a_tokens.pt", "weight": NaN}]'
    good_clip(tmp, "a")
    return write_manifest(tmp, text), ["entry 0", '"weight"', "finite"]


def case_weight_not_number(tmp):
    return write_manifest(tmp, [{**good_clip(tmp, "a"), "weight": "heavy"}]), ["entry 0", "not a number"]


def case_target_length(tmp):
    entry = good_clip(tmp, "a", frames=81, rows=30)
    return write_manifest(tmp, [entry]), ["entry 0", "30 rows for 81 audio frames", "21 at S=4"]


def case_mixed_layouts(tmp):
    entries = [good_clip(tmp, "a", frames=81, rows=21), good_clip(tmp, "b", frames=41, rows=41)]
    return write_manifest(tmp, entries), ["entry 1", "one layout"]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_train_refuses(case, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    manifest, needles = case(data)
    # A validation manifest that is fine, so the failure can only come from `manifest`.
    val = write_manifest(data, [good_clip(data, "v")], name="val.json")
    result, out = run_train(manifest, tmp_path, "--val-manifest", str(val))
    assert_refused(result, out, tmp_path, *needles)
    assert not (data / "pwned").exists()


@pytest.mark.parametrize("case", [case_missing, case_refused_pickle, case_target_length, case_nan],
                         ids=["missing", "pickle", "length", "nan"])
def test_check_refuses(case, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    manifest, needles = case(data)
    result = CliRunner().invoke(app, ["check", str(manifest)])
    assert_refused(result, tmp_path / "never", tmp_path, *needles)


def test_bad_validation_manifest_leaves_no_train_pack(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train = write_manifest(data, [good_clip(data, "a"), good_clip(data, "b")])
    val = write_manifest(data, [good_clip(data, "v", tokens=K + 1)], name="val.json")
    result, out = run_train(train, tmp_path, "--val-manifest", str(val))
    assert_refused(result, out, tmp_path, "val.json", "share L, C, K, D")


def test_latent_targets_at_the_wrong_scale(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    entries = [good_clip(data, n, frames=81, rows=21) for n in "abc"]
    manifest = write_manifest(data, entries)
    result, out = run_train(manifest, tmp_path, "--vae-scale", "3")
    assert result.exit_code == 2
    assert "fit vae-scale 4, not 3" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags,needle", [
    (["--audio-window", "4"], "odd"),
    (["--vae-scale", "1"], ">= 2"),
    (["--lr", "0"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--loss", "huber"], "--loss"),
    # cuda:99 is refused everywhere: for lack of CUDA here, for lack of a 100th GPU elsewhere.
    (["--device", "cuda:99"], "no CUDA" if not torch.cuda.is_available() else "CUDA device(s) are visible"),
    (["--context-tokens", "7"], "--context-tokens 7"),
    (["--val-fraction", "1.5"], "--val-fraction"),
])
def test_bad_flags(flags, needle, tmp_path, synth_small):
    result, out = run_train(synth_small["train"], tmp_path, *flags)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_installed_command_prints_no_traceback(tmp_path):
    """The real console script, in its own process: one line, exit code 2."""
    manifest = write_manifest(tmp_path, "not json")
    proc = subprocess.run(
        [sys.executable, "-m", "tune_adapter", "check", str(manifest)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "60"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: manifest")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_weights_parse(tmp_path):
    from tune_adapter.data import read_manifest

    entries = [{**good_clip(tmp_path, "a"), "weight": 2}, good_clip(tmp_path, "b")]
    parsed = read_manifest(write_manifest(tmp_path, entries))
    assert [e.weight for e in parsed] == [2.0, 1.0]
    assert not math.isnan(parsed[0].weight)
