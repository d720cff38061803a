import json
import os

import pytest
import torch
from tests.support.clips import write_clip, write_manifest

import tune_adapter.data.pack as pack_module
from tune_adapter.data import BatchGatherer, BatchSampler, load_data, padded_fraction, read_manifest
from tune_adapter.data.manifest import split_validation
from tune_adapter.windows import WindowSpec, clip_inputs, latent_of_frame


def test_relative_paths_resolve_against_the_manifest_folder(synth_small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entries = read_manifest(synth_small["train"])
    assert all(e.audio.is_absolute() and e.audio.parent == synth_small["train"].parent / "clips"
               for e in entries)


def test_pack_is_reused_and_not_rebuilt(synth_small, monkeypatch):
    first = load_data(synth_small["train"], synth_small["val"])
    stamp = (first.train.root / "index.json").stat().st_mtime_ns

    def no_rebuild(*args):
        raise AssertionError("pack rebuilt")

    monkeypatch.setattr(pack_module, "_write_pack", no_rebuild)
    again = load_data(synth_small["train"], synth_small["val"])
    assert again.train.root == first.train.root
    assert (again.train.root / "index.json").stat().st_mtime_ns == stamp


def _copy_dataset(src_manifest, folder):
    entries = json.loads(src_manifest.read_text())
    folder.mkdir()
    for e in entries[:4]:
        for key in ("audio", "target"):
            (folder / os.path.basename(e[key])).write_bytes((src_manifest.parent / e[key]).read_bytes())
            e[key] = os.path.basename(e[key])
    return write_manifest(folder, entries[:4])


def test_pack_is_rebuilt_when_anything_changes(synth_small, tmp_path):
    manifest = _copy_dataset(synth_small["train"], tmp_path / "d")
    roots = [load_data(manifest, manifest).train.root]
    entries = json.loads(manifest.read_text())
    # A clip's content changes (size and mtime).
    audio_file = manifest.parent / entries[0]["audio"]
    torch.save(torch.randn(7, 2, 16), audio_file)
    torch.save(torch.randn(7, 4, 16), manifest.parent / entries[0]["target"])
    roots.append(load_data(manifest, manifest).train.root)
    # Only a file's modification time changes.
    os.utime(audio_file, ns=(1, 1))
    roots.append(load_data(manifest, manifest).train.root)
    # The manifest's content changes.
    entries[1]["weight"] = 3.0
    manifest.write_text(json.dumps(entries))
    roots.append(load_data(manifest, manifest).train.root)
    assert len(set(roots)) == 4
    pack = load_data(manifest, manifest).train
    assert pack.frames[0] == 7 and pack.weights[1] == 3.0


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose mapping holds this tensor's memory (Linux /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end and len(rest) >= 5:
            return rest[4]
    return None


def test_pack_is_memory_mapped(synth_small):
    pack = load_data(synth_small["train"], synth_small["val"]).train
    assert mapped_file(pack.audio.parts[0]) == str(pack.root / "shards" / "00000.audio")
    assert mapped_file(pack.targets.parts[0]) == str(pack.root / "shards" / "00000.targets")


@pytest.mark.parametrize("pack_dtype", ["float32", "half"])
@pytest.mark.parametrize("W,S,layout", [(5, 4, "frame"), (3, 2, "frame"), (7, 4, "latent")])
def test_batches_equal_each_clip_computed_directly(tmp_path, W, S, layout, pack_dtype):
    """Exact, in float32 and in half precision: the stored values are the clip's rounded to
    bf16 (audio) and fp16 (targets), and a batch holds them exactly."""
    from tune_adapter.data.shards import PACK_DTYPES

    dtypes = PACK_DTYPES[pack_dtype]
    gen = torch.Generator().manual_seed(1)
    entries, clips = [], []
    for i, frames in enumerate([6, 1, 23, 13]):
        audio = torch.randn(frames, 2, 3, generator=gen)
        rows = frames if layout == "frame" else 1 + -(-(frames - 1) // S)
        target = torch.randn(rows, 4, 5, generator=gen)
        entries.append(write_clip(tmp_path, f"c{i}", audio, target))
        clips.append((audio.to(dtypes["audio"]).float(), target.to(dtypes["targets"]).float()))
    manifest = write_manifest(tmp_path, entries)
    pack = load_data(manifest, manifest, pack_dtype=pack_dtype, shard_bytes=200).train
    assert pack.audio.dtype == dtypes["audio"] and len(pack.audio.parts) > 1  # several shards
    spec = WindowSpec(W, S)
    batch = BatchGatherer(pack, spec, layout)[[2, 0, 3, 1]]
    for b, i in enumerate([2, 0, 3, 1]):
        audio, target = clips[i]
        first, latter = clip_inputs(audio, spec)
        n = latter.shape[1]
        assert torch.equal(batch.first[b], first[0])
        assert torch.equal(batch.latter[b, :n], latter[0])
        rows = int(batch.mask[b].sum())
        assert rows == target.shape[0]
        assert torch.equal(batch.targets[b, :rows], target)
        expected = latent_of_frame(rows, S) if layout == "frame" else torch.arange(rows)
        assert torch.equal(batch.positions[b, :rows], expected)
        assert not batch.mask[b, rows:].any()


def test_validation_split_is_stable_and_hash_based(synth_frame):
    entries = read_manifest(synth_frame["train"])
    train, val = split_validation(entries, 0.2)
    assert 0.1 < len(val) / len(entries) < 0.3
    # Same split whatever the order of the manifest, on every run.
    train2, val2 = split_validation(list(reversed(entries)), 0.2)
    assert {e.audio_as_written for e in val} == {e.audio_as_written for e in val2}
    assert {e.position for e in train} | {e.position for e in val} == set(range(len(entries)))


def test_sampler_covers_every_clip_once_and_is_seeded():
    lengths = torch.randint(5, 90, (103,), generator=torch.Generator().manual_seed(0))
    sampler = BatchSampler(lengths, batch_size=4, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(103))
        assert len(batches) == len(sampler) == 26
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    again = BatchSampler(lengths, batch_size=4, seed=7)
    again.set_epoch(1)
    assert list(again) == epochs[1]


def test_bucketing_wastes_less_padding():
    lengths = torch.randint(5, 90, (400,), generator=torch.Generator().manual_seed(0))
    shuffled = BatchSampler(lengths, 8, seed=1, bucket=False).batches()
    bucketed = BatchSampler(lengths, 8, seed=1, bucket=True).batches()
    assert padded_fraction(bucketed, lengths) < 0.05 < 0.3 < padded_fraction(shuffled, lengths)


def test_synth_teacher_window_scale_and_label_noise(tmp_path):
    """Validation targets are the teacher's own tokens; training targets carry the noise."""
    import json

    from tune_adapter.synth import SynthSpec, make_teacher, write_synth
    from tune_adapter.teacher import teacher_tokens

    spec = SynthSpec(train_clips=6, val_clips=3, teacher_window=3, teacher_scale=2, label_noise=0.5,
                     min_frames=30, max_frames=40, seed=4)
    manifests = write_synth(tmp_path, spec)
    teacher = make_teacher(spec.adapter_dims(), spec.seed)
    assert (teacher.dims.audio_window, teacher.dims.vae_scale) == (3, 2)
    relative_noise = []
    for split in ("train", "val"):
        for entry in json.loads(manifests[split].read_text()):
            audio = torch.load(tmp_path / entry["audio"], weights_only=True)
            target = torch.load(tmp_path / entry["target"], weights_only=True)
            clean = teacher_tokens(teacher, audio, "frame")
            if split == "val":
                assert torch.equal(target, clean)
            else:
                relative_noise.append(float((target - clean).std() / clean.std()))
    assert min(relative_noise) > 0.4 and max(relative_noise) < 0.6
