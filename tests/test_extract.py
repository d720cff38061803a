"""`tune-adapter extract` on a tiny wav2vec2 and a tiny teacher, built here: no download."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")
pyloudnorm = pytest.importorskip("pyloudnorm")
soxr = pytest.importorskip("soxr")

from tests.support.fakes import random_adapter, write_infinitetalk  # noqa: E402
from tune_adapter.adapter import AdapterDims  # noqa: E402
from tune_adapter.cli import app  # noqa: E402
from tune_adapter.data import load_data  # noqa: E402
from tune_adapter.extract import ExtractConfig, extract  # noqa: E402

runner = CliRunner()
TEACHER_DIMS = AdapterDims(layers=2, channels=16, intermediate_dim=8, context_tokens=4, output_dim=6)


@pytest.fixture(scope="module")
def wav2vec_dir(tmp_path_factory):
    """A 2-layer, 16-channel wav2vec2 with an 80x conv stack, and its feature extractor."""
    folder = tmp_path_factory.mktemp("wav2vec2")
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8, 8), conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=4,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=False,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    model = random_adapter(TEACHER_DIMS, seed=3)
    path = write_infinitetalk(tmp_path_factory.mktemp("teacher") / "infinitetalk.safetensors", model)
    return path, model


def tone(seconds, rate, channels=1, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([wave * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture
def audio_dir(tmp_path):
    folder = tmp_path / "wavs"
    (folder / "speaker2").mkdir(parents=True)
    soundfile.write(folder / "tone16k.wav", tone(1.0, 16000), 16000)  # T = 25
    soundfile.write(folder / "speaker2" / "stereo44k.wav", tone(1.3, 44100, channels=2, freq=330), 44100)
    soundfile.write(folder / "tone_b.wav", tone(0.9, 16000, freq=150), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    soundfile.write(folder / "blip.wav", tone(0.2, 16000), 16000)  # below pyloudnorm's 400 ms block
    return folder


def config_for(audio_dir, wav2vec_dir, teacher, out, **kwargs):
    return ExtractConfig(audio_dir=audio_dir, wav2vec_dir=wav2vec_dir, teacher=teacher[0], out=out,
                         device="cpu", **kwargs)


# --- an independent transcription of InfiniteTalk's generate_infinitetalk.py ---------------

def infinitetalk_speech(path):
    """librosa.load(path, sr=16000) (soundfile float32, channel mean, soxr_hq, ceil length),
    then loudness_norm(..., lufs=-23)."""
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    y = data.T.mean(axis=0)
    if rate != 16000:
        n = int(np.ceil(y.shape[0] * (16000 / rate)))
        y = soxr.resample(y, rate, 16000, quality="soxr_hq")
        y = np.pad(y, (0, max(0, n - len(y))))[:n].astype(np.float32)
    meter = pyloudnorm.Meter(16000)
    loudness = meter.integrated_loudness(y)
    if abs(loudness) > 100:
        return y
    return pyloudnorm.normalize.loudness(y, loudness, -23)


def infinitetalk_embedding(speech, folder):
    """get_embedding + InfiniteTalk's Wav2Vec2Model.forward, written out layer by layer."""
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
    model = transformers.Wav2Vec2Model.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager", dtype=torch.float32).eval()
    video_length = len(speech) / 16000 * 25
    values = np.squeeze(extractor(speech, sampling_rate=16000).input_values)
    values = torch.from_numpy(values).float().unsqueeze(0)
    with torch.no_grad():
        features = model.feature_extractor(values).transpose(1, 2)
        features = F.interpolate(features.transpose(1, 2), size=int(video_length), align_corners=True,
                                 mode="linear").transpose(1, 2)
        hidden, _ = model.feature_projection(features)
        encoder = model.encoder
        hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
        states = []
        for layer in encoder.layers:
            hidden = layer(hidden)
            states.append(hidden)
    emb = torch.stack(states, dim=1).squeeze(0)  # [L, T, C]
    return emb.permute(1, 0, 2)  # "b s d -> s b d"


def infinitetalk_tokens(adapter, emb):
    """Per-frame windows (wan/multitalk.py) regrouped per latent (WanModel.forward)."""
    window, scale = adapter.dims.audio_window, adapter.dims.vae_scale
    frames = emb.shape[0]
    assert (frames - 1) % scale == 0  # InfiniteTalk's clips are 4n+1 frames
    indices = torch.arange(window) - window // 2
    centre = (torch.arange(frames).unsqueeze(1) + indices.unsqueeze(0)).clamp(0, frames - 1)
    cond = emb[centre][None]  # [1, T, W, L, C]
    first = cond[:, :1]
    latter = cond[:, 1:].reshape(1, (frames - 1) // scale, scale, *cond.shape[2:])
    mid = window // 2
    latter = torch.cat([
        latter[:, :, :1, : mid + 1].flatten(2, 3),
        latter[:, :, 1:-1, mid: mid + 1].flatten(2, 3),
        latter[:, :, -1:, mid:].flatten(2, 3),
    ], dim=2)
    with torch.no_grad():
        return adapter(first, latter).squeeze(0)


# --- tests -------------------------------------------------------------------------------

def test_embeddings_and_tokens_equal_infinitetalks(tmp_path, audio_dir, wav2vec_dir, teacher):
    out = tmp_path / "data"
    result = extract(config_for(audio_dir, wav2vec_dir, teacher, out))
    assert result.dims == TEACHER_DIMS
    emb = torch.load(out / "clips" / "tone16k.audio.pt", weights_only=True)
    expected = infinitetalk_embedding(infinitetalk_speech(audio_dir / "tone16k.wav"), wav2vec_dir)
    assert emb.shape == (25, 2, 16) and emb.dtype == torch.float32
    assert torch.equal(emb, expected)
    tokens = torch.load(out / "clips" / "tone16k.tokens.pt", weights_only=True)
    assert tokens.shape == (7, 4, 6)
    assert torch.equal(tokens, infinitetalk_tokens(teacher[1], expected))


def test_resampled_stereo_matches_librosa_steps(tmp_path, audio_dir, wav2vec_dir, teacher):
    out = tmp_path / "data"
    extract(config_for(audio_dir, wav2vec_dir, teacher, out))
    speech = infinitetalk_speech(audio_dir / "speaker2" / "stereo44k.wav")
    assert len(speech) == math.ceil(int(1.3 * 44100) * 16000 / 44100)
    emb = torch.load(out / "clips" / "speaker2" / "stereo44k.audio.pt", weights_only=True)
    assert emb.shape[0] == int(len(speech) / 16000 * 25) == 32
    assert torch.equal(emb, infinitetalk_embedding(speech, wav2vec_dir))


def test_frame_layout_repeats_each_latents_tokens(tmp_path, audio_dir, wav2vec_dir, teacher):
    latent = extract(config_for(audio_dir, wav2vec_dir, teacher, tmp_path / "lat"))
    frame = extract(config_for(audio_dir, wav2vec_dir, teacher, tmp_path / "frame", layout="frame"))
    assert latent.extracted == frame.extracted
    per_latent = torch.load(tmp_path / "lat" / "clips" / "tone_b.tokens.pt", weights_only=True)
    per_frame = torch.load(tmp_path / "frame" / "clips" / "tone_b.tokens.pt", weights_only=True)
    frames = int(0.9 * 25)
    assert per_frame.shape == (frames, 4, 6) and per_latent.shape == (1 + math.ceil((frames - 1) / 4), 4, 6)
    for t in range(frames):
        assert torch.equal(per_frame[t], per_latent[0 if t == 0 else 1 + (t - 1) // 4])


def test_bad_files_are_skipped_by_name_and_the_rest_resumes(tmp_path, audio_dir, wav2vec_dir, teacher):
    out = tmp_path / "data"
    first = extract(config_for(audio_dir, wav2vec_dir, teacher, out))
    assert sorted(first.extracted) == ["speaker2/stereo44k.wav", "tone16k.wav", "tone_b.wav"]
    reasons = dict(first.skipped)
    assert set(reasons) == {"corrupt.wav", "blip.wav"}
    assert "unreadable" in reasons["corrupt.wav"] and "too short" in reasons["blip.wav"]
    tokens = out / "clips" / "tone_b.tokens.pt"
    stamp = (out / "clips" / "tone16k.tokens.pt").stat().st_mtime_ns
    tokens.unlink()  # as if the run had stopped before this clip's tokens were written
    second = extract(config_for(audio_dir, wav2vec_dir, teacher, out))
    assert second.extracted == ["tone_b.wav"]
    assert sorted(second.resumed) == ["speaker2/stereo44k.wav", "tone16k.wav"]
    assert (out / "clips" / "tone16k.tokens.pt").stat().st_mtime_ns == stamp
    assert len(json.loads((out / "train.json").read_text())) == 3


def test_manifests_load_and_check(tmp_path, audio_dir, wav2vec_dir, teacher):
    out = tmp_path / "data"
    result = extract(config_for(audio_dir, wav2vec_dir, teacher, out, val_fraction=0.3))
    train = json.loads((out / "train.json").read_text())
    val = json.loads((out / "val.json").read_text())
    assert len(train) + len(val) == 3 and len(val) >= 1
    assert all(not entry["audio"].startswith("/") for entry in train + val)
    data = load_data(result.manifests["train"], result.manifests["val"])
    assert data.train.layout_for(4) == "latent" and data.train.shapes.layers == 2
    checked = runner.invoke(app, ["check", str(out / "train.json")], env={"COLUMNS": "200"})
    assert checked.exit_code == 0, checked.output
    assert "per latent" in checked.output and "vae-scale 4" in checked.output
    # The split is a function of the paths: a second run writes the same one.
    extract(config_for(audio_dir, wav2vec_dir, teacher, out, val_fraction=0.3))
    assert json.loads((out / "val.json").read_text()) == val


def test_cli_extract_shows_dims_and_skips(tmp_path, audio_dir, wav2vec_dir, teacher):
    out = tmp_path / "data"
    args = ["extract", "--audio-dir", str(audio_dir), "--wav2vec-dir", str(wav2vec_dir),
            "--teacher", str(teacher[0]), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "W=5 S=4 L=2 C=16 I=8 K=4 D=6 norm=on" in result.output
    assert "corrupt.wav" in result.output and "blip.wav" in result.output
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "resumed" in again.output
    other = runner.invoke(app, [*args, "--layout", "frame"])
    assert other.exit_code == 2 and "layout" in other.stderr


@pytest.mark.parametrize("flag", ["--wav2vec-dir", "--teacher"])
def test_missing_weights_are_one_line_errors(tmp_path, audio_dir, wav2vec_dir, teacher, flag):
    paths = {"--wav2vec-dir": str(wav2vec_dir), "--teacher": str(teacher[0])}
    paths[flag] = str(tmp_path / "nowhere")
    args = ["extract", "--audio-dir", str(audio_dir), "--out", str(tmp_path / "data")]
    for name, value in paths.items():
        args += [name, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and flag in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_file_without_an_adapter_is_refused(tmp_path, audio_dir, wav2vec_dir):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, tmp_path / "not_infinitetalk.safetensors")
    result = runner.invoke(app, ["extract", "--audio-dir", str(audio_dir), "--wav2vec-dir", str(wav2vec_dir),
                                 "--teacher", str(tmp_path / "not_infinitetalk.safetensors"),
                                 "--out", str(tmp_path / "data")])
    assert result.exit_code == 2 and "no audio_proj" in result.stderr


def test_pack_out_writes_the_packs_that_the_tensor_files_make_and_resumes(tmp_path, audio_dir, wav2vec_dir,
                                                                         teacher, monkeypatch):
    """--pack-out: the same rows as extracting to files and packing them, stored in half
    precision; a run stopped part way continues where it stopped, rows unchanged."""
    import tune_adapter.extract as extract_module
    from tune_adapter.data import load_pack_dir

    files = extract(config_for(audio_dir, wav2vec_dir, teacher, tmp_path / "files", val_fraction=0.3))
    expected = load_data(files.manifests["train"], files.manifests["val"])
    real_tokens, calls = extract_module.teacher_tokens, []

    def stop_at_the_second_clip(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_tokens(*args)

    monkeypatch.setattr(extract_module, "teacher_tokens", stop_at_the_second_clip)
    packs = tmp_path / "packs"
    config = ExtractConfig(audio_dir, wav2vec_dir, teacher[0], packs, device="cpu", val_fraction=0.3, pack_out=packs)
    with pytest.raises(KeyboardInterrupt):
        extract(config)
    assert not (packs / "train").exists()
    monkeypatch.setattr(extract_module, "teacher_tokens", real_tokens)
    resumed = extract(config)
    assert len(resumed.resumed) == 1 and len(resumed.extracted) == 2
    data = load_pack_dir(packs)
    assert data.train.audio.dtype == torch.bfloat16 and len(data.val) >= 1

    def clips(*packs):
        """{wav name: its audio rows} over packs (the two flows may split them apart otherwise)."""
        found = {}
        for p in packs:
            for k, name in enumerate(p.names):
                rows = torch.arange(int(p.audio_offsets[k]), int(p.audio_offsets[k] + p.frames[k]))
                found[name.removeprefix("clips/").replace(".audio.pt", ".wav")] = p.take_audio(rows)
        return found

    got, want = clips(data.train, data.val), clips(expected.train, expected.val)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert extract(config).resumed  # a finished pack: nothing to do
