"""Pack format 2: shards mapped read-only at any size, half precision, targets stored once,
checksums, and the errors of a damaged, full or foreign pack."""

import errno
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tests.support.clips import write_clip, write_manifest
from tests.test_windows import reference_forward, reference_inputs
from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.cli import app
from tune_adapter.data import load_data, load_pack_dir, pack_manifests, read_manifest, split_roots
from tune_adapter.data.clips import load_clip
from tune_adapter.data.pack import open_pack
from tune_adapter.data.sampler import BatchSampler
from tune_adapter.data.shards import PACK_DTYPES, ShardWriter
from tune_adapter.errors import DataError
from tune_adapter.trainer import evaluate_pack

W, S = 5, 4
runner = CliRunner()


def latent_targets(audio: torch.Tensor, gen) -> torch.Tensor:
    """Per-frame targets as a teacher adapter gives them: each latent's row repeated."""
    frames = audio.shape[0]
    rows = torch.randn(1 + math.ceil((frames - 1) / S), 3, 8, generator=gen)
    latent = [0 if t == 0 else (t - 1) // S + 1 for t in range(frames)]
    return rows[latent]


@pytest.fixture
def dataset(tmp_path):
    gen = torch.Generator().manual_seed(3)
    entries, clips = [], []
    for i, frames in enumerate([9, 33, 1, 21, 17, 40]):
        audio = torch.randn(frames, 2, 6, generator=gen)
        target = latent_targets(audio, gen)
        entries.append({**write_clip(tmp_path, f"c{i}", audio, target), "weight": 0.5 + i})
        clips.append((audio, target, 0.5 + i))
    return write_manifest(tmp_path, entries), clips


def packed(tmp_path, manifest, pack_dtype="half", shard_bytes=2000):
    out = tmp_path / f"packed-{pack_dtype}"
    entries = read_manifest(manifest)
    pack_manifests([(entries, "train"), (entries, "val")], pack_dtype=pack_dtype, roots=list(split_roots(out)),
                   shard_bytes=shard_bytes)
    return out


def test_a_pack_file_larger_than_ram_and_swap_opens(tmp_path, dataset):
    """A private writable mapping (the format 1 reader's) is counted against RAM + swap and
    fails; the read-only shared one opens a sparse shard of any size."""
    memory = sum(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
                 if line.startswith(("MemTotal:", "SwapTotal:")))
    root = split_roots(packed(tmp_path, dataset[0], "float32", shard_bytes=1 << 30))[0]
    index = json.loads((root / "index.json").read_text())
    shard = index["shards"][0]
    row_bytes = 2 * 6 * 4
    rows = (memory + (1 << 30)) // row_bytes
    before = open_pack(root).take_audio(torch.arange(5))
    with open(root / shard["audio"], "r+b") as f:
        f.truncate(rows * row_bytes)  # sparse: no disk used
    shard["audio_rows"] = rows
    (root / "index.json").write_text(json.dumps(index))
    pack = open_pack(root)
    assert len(pack.audio) == rows and pack.audio.shape[0] * row_bytes > memory
    assert torch.equal(pack.take_audio(torch.arange(5)), before)
    assert not pack.take_audio(torch.tensor([rows - 1])).any()


@pytest.mark.parametrize("pack_dtype", ["half", "float32"])
def test_val_l1_equals_infinitetalks_on_the_stored_values(tmp_path, dataset, pack_dtype):
    """InfiniteTalk's literal windows and class on the inputs as stored (bf16 audio, fp16
    targets; or float32) give the val_l1 the trainer reports."""
    manifest, clips = dataset
    pack = load_pack_dir(packed(tmp_path, manifest, pack_dtype)).val
    torch.manual_seed(0)
    model = AudioProjModel(AdapterDims(W, S, 2, 6, intermediate_dim=16, context_tokens=3, output_dim=8))
    dtypes = PACK_DTYPES[pack_dtype]
    losses, weights = [], []
    with torch.no_grad():
        for audio, target, weight in clips:
            audio, target = audio.to(dtypes["audio"]).float(), target.to(dtypes["targets"]).float()
            pred = reference_forward(model, *reference_inputs(audio, W, S))[0]
            latent = [0 if t == 0 else (t - 1) // S + 1 for t in range(audio.shape[0])]
            losses.append(float((pred[latent] - target).abs().double().mean()))
            weights.append(weight)
    expected = sum(w * l for w, l in zip(weights, losses)) / sum(weights)
    got = evaluate_pack(model, pack)["val_l1"]
    assert got == pytest.approx(expected, rel=1e-6)  # float32 summation order is all that differs


def test_repeated_target_rows_are_stored_once_and_read_back_whole(tmp_path, dataset):
    manifest, clips = dataset
    pack = load_pack_dir(packed(tmp_path, manifest, "float32")).train
    frames = sum(a.shape[0] for a, _, _ in clips)
    latents = sum(1 + math.ceil((a.shape[0] - 1) / S) for a, _, _ in clips)
    assert len(pack.targets) == latents < frames and int(pack.target_rows.sum()) == frames
    assert len(pack.audio.parts) > 1  # several shards
    for i, (_, target, _) in enumerate(clips):
        start = int(pack.target_offsets[i])
        assert torch.equal(pack.take_targets(torch.arange(start, start + len(target))), target)


def test_half_precision_halves_the_bytes_per_frame(tmp_path, dataset):
    manifest, clips = dataset
    half = load_pack_dir(packed(tmp_path, manifest, "half")).train
    full = load_pack_dir(packed(tmp_path, manifest, "float32")).train
    index = 4 * len(full.target_map)  # int32 per frame, either way
    assert (half.stored_bytes - index) * 2 == full.stored_bytes - index


def test_a_damaged_shard_is_named_in_one_line(tmp_path, dataset):
    out = packed(tmp_path, dataset[0])
    load_pack_dir(out)  # verified once: the marker skips it next time
    assert (split_roots(out)[0] / "verified.json").is_file()
    shard = split_roots(out)[0] / "shards" / "00001.audio"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(data)  # a new modification time: verified again
    with pytest.raises(DataError, match=r"shards/00001.audio: its sha256 does not match"):
        load_pack_dir(out)


def test_a_full_disk_while_packing_leaves_nothing(tmp_path, dataset, monkeypatch):
    real_add = ShardWriter.add
    calls = []

    def add(self, audio, targets):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, audio, targets)

    monkeypatch.setattr(ShardWriter, "add", add)
    with pytest.raises(DataError, match="no space left on the device"):
        packed(tmp_path, dataset[0])
    assert not (tmp_path / "packed-half").exists() and not any(tmp_path.glob("**/.building-*"))
    calls.clear()
    with pytest.raises(DataError, match="no space left"):
        load_data(dataset[0], dataset[0], cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_pack_of_another_format_is_refused_with_the_command_that_rebuilds_it(tmp_path, dataset):
    out = packed(tmp_path, dataset[0])
    index = split_roots(out)[0] / "index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "format": 1}))
    result = runner.invoke(app, ["train", "--data", str(out), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"format 1, and this version reads format 2: rebuild it with tune-adapter pack --manifest M --out {out}" \
        in " ".join(result.output.split())


def test_search_refuses_a_missing_data_folder_before_ray_starts(tmp_path):
    import ray

    result = runner.invoke(app, ["search", "--data", str(tmp_path / "nothing"), "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.output and not ray.is_initialized()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["search", "--data", str(tmp_path / "empty"), "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "holds no pack" in result.output


def test_pack_command_writes_a_folder_that_train_takes(tmp_path, dataset):
    out = tmp_path / "ds"
    made = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--val-fraction", "0.3", "--out", str(out),
                               "--shard-mb", "1"], env={"COLUMNS": "200"})
    assert made.exit_code == 0, made.output
    assert "bytes per video frame" in made.output and (out / "train" / "index.json").is_file()
    again = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--out", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output
    trained = runner.invoke(app, ["train", "--data", str(out), "--output-dir", str(tmp_path / "o"), "--epochs", "1",
                                  "--audio-window", "5"])
    assert trained.exit_code == 0, trained.output


def test_shards_are_read_a_window_at_a_time_and_every_clip_once():
    lengths = torch.randint(5, 80, (120,), generator=torch.Generator().manual_seed(0))
    shards = torch.arange(120) // 10  # 12 shards
    advised = []
    sampler = BatchSampler(lengths, 4, seed=1, shards=shards, window=3, read_ahead=advised.append)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert sorted(c for b in batches for c in b) == list(range(120)) and len(batches) == len(sampler)
    seen = [set(shards[b].tolist()) for b in batches]
    windows = [set(w) for w in advised]
    assert len(windows) == 4 and set().union(*windows) == set(range(12))
    # Every batch lies within one window of 3 shards, and the windows come in the order advised.
    assert all(any(s <= w for w in windows) for s in seen)
    # Another trial (seed) reads the shards in the same order: concurrent trials share reads.
    other = BatchSampler(lengths, 4, seed=7, shards=shards, window=3, read_ahead=[].append)
    other.set_epoch(2)
    assert [sorted(set(shards[b].tolist())) for b in other.batches()][0][0] in windows[0]


def test_a_window_as_large_as_the_pack_is_the_whole_pack_shuffle():
    lengths = torch.randint(5, 80, (50,), generator=torch.Generator().manual_seed(0))
    plain = BatchSampler(lengths, 4, seed=3)
    windowed = BatchSampler(lengths, 4, seed=3, shards=torch.arange(50) // 10, window=5)
    for epoch in range(3):
        plain.set_epoch(epoch)
        windowed.set_epoch(epoch)
        assert plain.batches() == windowed.batches()


def test_a_pack_built_after_a_kill_equals_one_built_in_one_go(tmp_path, dataset):
    """A kill part way through a clip leaves bytes past the journal's last clip and a torn
    journal line: the builder cuts both back and goes on; the pack is byte for byte the same."""
    from tune_adapter.data.pack import PackBuilder

    entries = read_manifest(dataset[0])
    clips = [(e, *load_clip(e)) for e in entries]
    dtypes = PACK_DTYPES["half"]
    whole = PackBuilder(tmp_path / "whole", dtypes, shard_bytes=2000)
    for clip in clips:
        whole.add(*clip)
    whole.finish()
    killed = PackBuilder(tmp_path / "killed", dtypes, shard_bytes=2000)
    for clip in clips[:4]:
        killed.add(*clip)
    shard = killed.writer.shard.names[0]
    del killed  # the process dies: no finish
    with open(tmp_path / "killed" / shard, "ab") as f:
        f.write(b"half a clip")
    with open(tmp_path / "killed" / "clips.jsonl", "a") as f:
        f.write('{"name": "torn')
    resumed = PackBuilder(tmp_path / "killed", dtypes, shard_bytes=2000)
    assert len(resumed.names) == 4
    resumed.add(*clips[4])
    del resumed  # killed again, between two clips
    again = PackBuilder(tmp_path / "killed", dtypes, shard_bytes=2000)
    assert len(again.names) == 5
    for clip in clips[5:]:
        again.add(*clip)
    again.finish()
    for name in ["index.json", "target_map.i32", *(p.relative_to(tmp_path / "whole").as_posix()
                                                    for p in (tmp_path / "whole" / "shards").iterdir())]:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
