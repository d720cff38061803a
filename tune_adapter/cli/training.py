"""The data and training commands: train, synth, check, extract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import TrainConfig
from ..errors import UserError
from .app import CacheDir, DataDir, PackDtype, ValFraction, ValManifest
from .config_flags import config_flags


@config_flags(TrainConfig)
def train(
    *,
    output_dir: Annotated[Path, typer.Option(help="Checkpoints and metrics go here")],
    manifest: Annotated[Optional[Path], typer.Option(help="Training manifest (JSON list of clips)")] = None,
    val_manifest: ValManifest = None,
    val_fraction: ValFraction = None,
    data: DataDir = None,
    config: TrainConfig,  # a flag per field, here: config.py states their defaults and help
    resume: Annotated[Optional[Path], typer.Option(help="Checkpoint folder, or a run's --output-dir")] = None,
    cache_dir: CacheDir = None,
    pack_dtype: PackDtype = "half",
):
    """Train one adapter (the seed guide's trainer)."""
    from ..checkpoint import latest_checkpoint
    from ..data import load_training_data
    from ..runtime import resolve_device
    from ..trainer import train as run_training
    from ..views.display import TrainProgressBar, console

    resolve_device(config.device)
    resume_from = latest_checkpoint(resume) if resume is not None else None
    data = load_training_data(manifest, val_manifest, val_fraction, cache_dir, pack_dtype, data)
    if config.init_from:
        console.print(describe_start(config, data), soft_wrap=True)  # refuses a mismatch first
    console.print(
        f"{len(data.train)} training clips, {len(data.val)} validation clips, "
        f"{data.train.layout()} targets; checkpoints in {output_dir}"
    )
    metrics_log = Path(output_dir) / "metrics.jsonl"

    def log_epoch(metrics, checkpoint):
        metrics_log.parent.mkdir(parents=True, exist_ok=True)
        with open(metrics_log, "a") as f:
            f.write(json.dumps({**metrics, "checkpoint": str(checkpoint) if checkpoint else None}) + "\n")

    with TrainProgressBar() as bar:
        result = run_training(config, data, report=log_epoch, progress=bar,
                              output_dir=output_dir, resume_from=resume_from)
    if result.best is not None:
        console.print(f"best val_l1 {result.best['val_l1']:.4f} at epoch {result.best['epoch']}")
    if result.best_checkpoint is not None:
        saved = result.best_checkpoint_metrics
        console.print(f"best saved checkpoint (epoch {saved['epoch']}, val_l1 {saved['val_l1']:.4f}): "
                      f"{result.best_checkpoint}", soft_wrap=True)


def describe_start(config: TrainConfig, data) -> str:
    """Where the weights start, and the layers --init-partial leaves fresh."""
    from ..init_from import check_initial_adapter, read_initial_adapter
    from ..trainer import adapter_dims

    initial = read_initial_adapter(Path(config.init_from))
    dims = adapter_dims(config, data.train.shapes, initial)
    _, fresh = check_initial_adapter(initial, dims, config.init_partial)
    layers = sorted({name.split(".")[0] for name in fresh})
    return (f"starting from {initial.source} ({initial.kind})"
            + (f"; {', '.join(layers)} start fresh (--init-partial)" if layers else ""))


def synth(
    out: Annotated[Path, typer.Option(help="Folder for clips/, train.json, val.json")],
    dims: Annotated[str, typer.Option(help="tiny or infinitetalk")] = "tiny",
    layout: Annotated[str, typer.Option(help="frame ([T, K, D] targets) or latent (\\[n_lat, K, D])")] = "frame",
    train_clips: int = 160,
    val_clips: int = 32,
    min_frames: int = 21,
    max_frames: int = 81,
    seed: int = 0,
    teacher_window: Annotated[int, typer.Option(help="The teacher adapter's W (odd)")] = 5,
    teacher_scale: Annotated[int, typer.Option(help="The teacher adapter's S")] = 4,
    label_noise: Annotated[float, typer.Option(help="Gaussian noise on the training targets, relative to their std")] = 0.0,
):
    """Write a seeded synthetic teacher/student dataset."""
    from ..synth import SynthSpec, write_synth
    from ..views.display import console

    spec = SynthSpec(dims=dims, layout=layout, train_clips=train_clips, val_clips=val_clips,
                     min_frames=min_frames, max_frames=max_frames, seed=seed,
                     teacher_window=teacher_window, teacher_scale=teacher_scale, label_noise=label_noise)
    if (out / "train.json").exists():
        raise UserError(f"{out} already holds a dataset (train.json): choose another --out or delete it")
    with console.status(f"writing {train_clips + val_clips} clips"):
        manifests = write_synth(out, spec)
    console.print(f"train: {manifests['train']}\nval:   {manifests['val']}")


def check(
    manifest: Annotated[Path, typer.Argument(help="Manifest to validate")],
    cache_dir: CacheDir = None,
    pack_dtype: PackDtype = "half",
):
    """Validate a manifest's clips, pack them, and summarise them."""
    from ..data import pack_manifest, read_manifest
    from ..views.display import console, pack_progress, pack_summary

    entries = read_manifest(manifest)
    with pack_progress(len(entries)) as advance:
        pack = pack_manifest(entries, str(manifest), cache_dir, pack_dtype, progress=advance)
    console.print(pack_summary(pack, f"{manifest}: valid"))


def pack(
    manifest: Annotated[Path, typer.Option(help="Training manifest (JSON list of clips)")],
    out: Annotated[str, typer.Option(metavar="DIR|URI", help="Where to write the train/ and val/ packs, for --data: a new folder, or a URI (s3://, gs://, file://) for a cluster whose nodes share no folder")],
    val_manifest: ValManifest = None,
    val_fraction: ValFraction = None,
    pack_dtype: PackDtype = "half",
    shard_mb: Annotated[float, typer.Option(help="Shards of at most about this many MiB")] = 256.0,
):
    """Validate a dataset and pack it once, into a folder or URI that search, train and confirm take (--data)."""
    from ..data.remote import check_empty_destination, is_uri
    from ..views.display import console

    if not shard_mb > 0:
        raise UserError(f"--shard-mb {shard_mb} is out of range: it must be above 0")
    if is_uri(out):
        check_empty_destination(out)
        pack_to_uri(manifest, out, val_manifest, val_fraction, pack_dtype, shard_mb)
        return
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--out {out} is not empty: give a new folder (a pack is never written over)")
    pack_to_folder(manifest, folder, val_manifest, val_fraction, pack_dtype, shard_mb)
    console.print(f"packed: {out} (use it with --data {out})", soft_wrap=True)


def pack_to_folder(manifest: Path, folder: Path, val_manifest: Path | None, val_fraction: float | None,
                   pack_dtype: str, shard_mb: float, shown_as: str | None = None) -> None:
    from ..data import pack_manifests, split_entries, split_roots
    from ..views.display import console, pack_progress, pack_summary

    splits, roots = split_entries(manifest, val_manifest, val_fraction), list(split_roots(folder))
    with pack_progress(sum(len(entries) for entries, _ in splits)) as advance:
        packs = pack_manifests(splits, pack_dtype=pack_dtype, roots=roots,
                               shard_bytes=int(shard_mb * 2**20), progress=advance)
    for split, packed, root in zip(("training", "validation"), packs, roots):
        location = f"{shown_as.rstrip('/')}/{root.name}" if shown_as else None
        console.print(pack_summary(packed, f"{shown_as or folder}: {split}", location))


def pack_to_uri(manifest: Path, uri: str, val_manifest: Path | None, val_fraction: float | None,
                pack_dtype: str, shard_mb: float) -> None:
    """Packed in a local folder of the cache (the disk packs already use), then uploaded."""
    import shutil
    import tempfile

    from ..data import default_cache_root
    from ..data.remote import upload_pack
    from ..views.display import console

    cache = default_cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    local = Path(tempfile.mkdtemp(prefix=".uploading-", dir=cache))
    try:
        pack_to_folder(manifest, local / "pack", val_manifest, val_fraction, pack_dtype, shard_mb, shown_as=uri)
        with console.status(f"uploading to {uri}"):
            upload_pack(local / "pack", uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    console.print(f"packed: {uri} (use it with --data {uri})", soft_wrap=True)


def extract(
    audio_dir: Annotated[Path, typer.Option(help="Folder of speech .wav files (subfolders too)")],
    wav2vec_dir: Annotated[Path, typer.Option(help="Local wav2vec2 folder, e.g. weights/chinese-wav2vec2-base")],
    teacher: Annotated[Path, typer.Option(help="InfiniteTalk weights holding audio_proj.*, e.g. weights/InfiniteTalk/single/infinitetalk.safetensors")],
    out: Annotated[Optional[Path], typer.Option(help="Dataset folder: clips/, train.json (val.json)")] = None,
    layout: Annotated[str, typer.Option(help="latent (\\[n_lat, K, D] tokens, as InfiniteTalk emits) or frame ([T, K, D])")] = "latent",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    val_fraction: Annotated[Optional[float], typer.Option(help="Also write val.json with this fraction of clips (by path hash) [with --pack-out: 0.1]")] = None,
    pack_out: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Instead of --out: write the clips straight into packs for --data (train/, val/); a rerun continues")] = None,
    pack_dtype: PackDtype = "half",
):
    """WAV files -> InfiniteTalk's wav2vec2 frame embeddings + its adapter's tokens, and manifests (or packs)."""
    if (out is None) == (pack_out is None):
        raise UserError("give --out DIR (tensor files and manifests) or --pack-out DIR (packs for --data), one of them")
    try:
        from ..extract import ExtractConfig, extract as run_extract
        from ..views.extract_view import ExtractProgressBar, extract_summary, skipped_table
        from ..wav2vec import quiet_transformers
    except ImportError as exc:
        raise UserError(
            f"tune-adapter extract needs the [extract] extra ({exc.name} is missing): "
            'pip install -e ".[extract]"'
        ) from None
    from ..views.display import console

    quiet_transformers()
    config = ExtractConfig(audio_dir=audio_dir, wav2vec_dir=wav2vec_dir, teacher=teacher, out=out or pack_out,
                           layout=layout, device=device, val_fraction=val_fraction, pack_out=pack_out,
                           pack_dtype=pack_dtype)
    with ExtractProgressBar() as bar:
        result = run_extract(config, bar)
    console.print(extract_summary(result))
    if result.skipped:
        console.print(skipped_table(result))
