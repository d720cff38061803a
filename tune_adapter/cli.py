"""The `tune-adapter` command: parses flags, calls the library, prints with rich."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter search for InfiniteTalk's audio adapter (AudioProjModel).",
)


def user_errors(fn):
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .display import fail

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            fail("interrupted")
            raise typer.Exit(130) from None

    return wrapper


CacheDir = Annotated[
    Optional[Path],
    typer.Option(help="Packed-cache folder [default: $TUNE_ADAPTER_CACHE or ~/.cache/tune-adapter/packs]"),
]
ValManifest = Annotated[Optional[Path], typer.Option(help="Validation manifest")]
ValFraction = Annotated[
    Optional[float],
    typer.Option(help="Hold out this fraction of --manifest by path hash [default: 0.1]"),
]


@app.command()
@user_errors
def train(
    manifest: Annotated[Path, typer.Option(help="Training manifest (JSON list of clips)")],
    output_dir: Annotated[Path, typer.Option(help="Checkpoints and metrics go here")],
    val_manifest: ValManifest = None,
    val_fraction: ValFraction = None,
    batch_size: int = 2,
    epochs: int = 5,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    audio_window: Annotated[int, typer.Option(help="Frames per window W (odd)")] = 5,
    vae_scale: Annotated[int, typer.Option(help="VAE temporal downsampling S")] = 4,
    loss: Annotated[str, typer.Option(help="l1, mse or smooth_l1")] = "l1",
    grad_clip: Annotated[float, typer.Option(help="Max gradient norm; 0 turns clipping off")] = 1.0,
    mixed_precision: Annotated[bool, typer.Option(help="bf16 autocast (fp16 + grad scaling on GPUs without bf16)")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    num_workers: Annotated[int, typer.Option(help="Batch-gathering worker processes")] = 0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N epochs (and at the end)")] = 1,
    log_every: Annotated[int, typer.Option(help="Show the step loss every N steps")] = 50,
    context_tokens: Annotated[Optional[int], typer.Option(help="K; must match the targets [default: theirs]")] = None,
    output_dim: Annotated[Optional[int], typer.Option(help="D; must match the targets [default: theirs]")] = None,
    intermediate_dim: int = 512,
    norm_output_audio: Annotated[bool, typer.Option(help="LayerNorm on the output tokens (InfiniteTalk: on)")] = True,
    seed: int = 0,
    resume: Annotated[Optional[Path], typer.Option(help="Checkpoint folder, or a run's --output-dir")] = None,
    cache_dir: CacheDir = None,
):
    """Train one adapter (the seed guide's trainer)."""
    from .checkpoint import latest_checkpoint
    from .config import TrainConfig
    from .data import load_data
    from .display import TrainProgressBar, console
    from .runtime import resolve_device
    from .trainer import train as run_training

    config = TrainConfig(
        lr=lr, batch_size=batch_size, epochs=epochs, audio_window=audio_window,
        vae_scale=vae_scale, weight_decay=weight_decay, loss=loss, grad_clip=grad_clip,
        mixed_precision=mixed_precision, seed=seed, intermediate_dim=intermediate_dim,
        context_tokens=context_tokens, output_dim=output_dim,
        norm_output_audio=norm_output_audio, device=device, num_workers=num_workers,
        save_every=save_every, log_every=log_every,
    )
    resolve_device(device)
    resume_from = latest_checkpoint(resume) if resume is not None else None
    data = load_data(manifest, val_manifest, val_fraction, cache_dir)
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
        console.print(f"best saved checkpoint: {result.best_checkpoint}", soft_wrap=True)


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option(help="Folder for clips/, train.json, val.json")],
    dims: Annotated[str, typer.Option(help="tiny or infinitetalk")] = "tiny",
    layout: Annotated[str, typer.Option(help="frame ([T, K, D] targets) or latent ([n_lat, K, D])")] = "frame",
    train_clips: int = 160,
    val_clips: int = 32,
    min_frames: int = 21,
    max_frames: int = 81,
    seed: int = 0,
):
    """Write a seeded synthetic teacher/student dataset."""
    from .display import console
    from .synth import SynthSpec, write_synth

    spec = SynthSpec(dims=dims, layout=layout, train_clips=train_clips, val_clips=val_clips,
                     min_frames=min_frames, max_frames=max_frames, seed=seed)
    if (out / "train.json").exists():
        raise UserError(f"{out} already holds a dataset (train.json): choose another --out or delete it")
    with console.status(f"writing {train_clips + val_clips} clips"):
        manifests = write_synth(out, spec)
    console.print(f"train: {manifests['train']}\nval:   {manifests['val']}")


@app.command()
@user_errors
def check(
    manifest: Annotated[Path, typer.Argument(help="Manifest to validate")],
    cache_dir: CacheDir = None,
):
    """Validate a manifest's clips, pack them, and summarise them."""
    from .data import pack_manifest, read_manifest
    from .display import console, pack_summary

    entries = read_manifest(manifest)
    with console.status(f"validating {len(entries)} clips"):
        pack = pack_manifest(entries, str(manifest), cache_dir)
    console.print(pack_summary(pack, f"{manifest}: valid"))


@app.command()
@user_errors
def bench(
    dims: Annotated[str, typer.Option(help="infinitetalk or tiny")] = "infinitetalk",
    frames: Annotated[int, typer.Option(help="Frames per clip")] = 81,
    batch_size: int = 4,
    steps: Annotated[int, typer.Option(help="Timed steps (after 2 warm-up steps)")] = 10,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    mixed_precision: Annotated[bool, typer.Option(help="bf16 matrix products (CPU) / bf16 autocast (CUDA)")] = True,
    lengths: Annotated[tuple[int, int], typer.Option(help="Clip lengths of the padding measurement")] = (21, 121),
):
    """Time the trainer against its floor and a straightforward trainer; report RSS and padding."""
    from .bench import BenchSpec, run_bench
    from .display import bench_table, console

    spec = BenchSpec(dims=dims, frames=frames, batch_size=batch_size, steps=steps, device=device,
                     mixed_precision=mixed_precision, mixed_lengths=lengths)
    with console.status("benchmarking (each trainer in its own process)"):
        report = run_bench(spec)
    console.print(bench_table(report))


def main() -> None:
    app()
