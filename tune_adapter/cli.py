"""The `tune-adapter` command: parses flags, calls the library, prints with rich."""

from __future__ import annotations

import functools
import json
from functools import partial
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
    if result.best_checkpoint is not None:
        saved = result.best_checkpoint_metrics
        console.print(f"best saved checkpoint (epoch {saved['epoch']}, val_l1 {saved['val_l1']:.4f}): "
                      f"{result.best_checkpoint}", soft_wrap=True)


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
    teacher_window: Annotated[int, typer.Option(help="The teacher adapter's W (odd)")] = 5,
    teacher_scale: Annotated[int, typer.Option(help="The teacher adapter's S")] = 4,
    label_noise: Annotated[float, typer.Option(help="Gaussian noise on the training targets, relative to their std")] = 0.0,
):
    """Write a seeded synthetic teacher/student dataset."""
    from .display import console
    from .synth import SynthSpec, write_synth

    spec = SynthSpec(dims=dims, layout=layout, train_clips=train_clips, val_clips=val_clips,
                     min_frames=min_frames, max_frames=max_frames, seed=seed,
                     teacher_window=teacher_window, teacher_scale=teacher_scale, label_noise=label_noise)
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
def search(
    space: Annotated[Path, typer.Option(help="Space file defining space(trial)")] = Path("search_spaces/default.py"),
    manifest: Annotated[Optional[Path], typer.Option(help="Training manifest [default: a synthetic dataset under --storage]")] = None,
    val_manifest: ValManifest = None,
    val_fraction: ValFraction = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Trials [space's NUM_SAMPLES, else 16]")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Epochs of a trial that ASHA keeps [MAX_EPOCHS, else 10]")] = None,
    grace_period: Annotated[Optional[int], typer.Option(help="Epochs before ASHA may stop a trial [GRACE_PERIOD, else 1]")] = None,
    reduction_factor: Annotated[Optional[int], typer.Option(help="ASHA keeps 1/R at each rung [REDUCTION_FACTOR, else 3]")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help="CPUs (and torch threads) per trial [1]")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPU fraction per trial, or whole GPUs above 1 [0.25 with GPUs, else 0]")] = None,
    max_concurrent: Annotated[Optional[int], typer.Option(help="Trials at once [as many as resources allow]")] = None,
    storage: Annotated[Path, typer.Option(help="Folder of experiments")] = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Experiment name [the space file's name]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Optuna sampler seed [0]")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped search of this name")] = False,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one")] = None,
    max_failures: Annotated[Optional[int], typer.Option(help="Retries of a failing trial [1]")] = None,
    mixed_precision: Annotated[bool, typer.Option(help="bf16 autocast in every trial")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs and at a trial's end (fewer: less I/O, coarser resume and export)")] = 1,
    baseline: Annotated[bool, typer.Option(help="First run the space's BASELINE (the guide's defaults), all epochs, to compare the winner with")] = True,
    cache_dir: CacheDir = None,
    top: Annotated[int, typer.Option(help="Trials in the final table")] = 5,
):
    """Search hyperparameters with Ray Tune (Optuna samples, ASHA stops weak trials)."""
    from .display import console
    from .results import TRIALS_FILE, open_experiment, read_trials
    from .search import resolve_options, run_search
    from .search.live import top_trials_table
    from .space import load_space

    space_file = load_space(space)
    options = resolve_options(
        space_file.defaults, space=space, manifest=manifest, val_manifest=val_manifest,
        val_fraction=val_fraction, num_samples=num_samples, max_epochs=max_epochs,
        grace_period=grace_period, reduction_factor=reduction_factor, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent, storage=storage, name=name,
        seed=seed, resume=resume, address=address, max_failures=max_failures,
        mixed_precision=mixed_precision, checkpoint_every=checkpoint_every, cache_dir=cache_dir,
        baseline=baseline,
    )
    outcome = run_search(options, console=console)
    folder = outcome.experiment_dir
    if (folder / TRIALS_FILE).is_file():  # none when stopped before the first result
        folder, info = open_experiment(folder)
        console.print(top_trials_table(read_trials(folder), info.params, top, f"top {top} trials"))
    if not outcome.complete:
        console.print(f"[yellow]stopped with {outcome.finished} of {outcome.num_samples} trials finished: "
                      f"continue with the same command plus --resume")
        raise typer.Exit(1)
    console.print(f"results: {folder}/trials.parquet, epochs.parquet", soft_wrap=True)


Experiment = Annotated[
    Optional[Path], typer.Option(help="Experiment folder [the latest under results/]")
]


@app.command()
@user_errors
def extract(
    audio_dir: Annotated[Path, typer.Option(help="Folder of speech .wav files (subfolders too)")],
    wav2vec_dir: Annotated[Path, typer.Option(help="Local wav2vec2 folder, e.g. weights/chinese-wav2vec2-base")],
    teacher: Annotated[Path, typer.Option(help="InfiniteTalk weights holding audio_proj.*, e.g. weights/InfiniteTalk/single/infinitetalk.safetensors")],
    out: Annotated[Path, typer.Option(help="Dataset folder: clips/, train.json (val.json)")],
    layout: Annotated[str, typer.Option(help="latent ([n_lat, K, D] tokens, as InfiniteTalk emits) or frame ([T, K, D])")] = "latent",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    val_fraction: Annotated[Optional[float], typer.Option(help="Also write val.json with this fraction of clips (by path hash)")] = None,
):
    """WAV files -> InfiniteTalk's wav2vec2 frame embeddings + its adapter's tokens, and manifests."""
    try:
        from .extract import ExtractConfig, extract as run_extract
        from .extract_view import ExtractProgressBar, extract_summary, skipped_table
        from .wav2vec import quiet_transformers
    except ImportError as exc:
        raise UserError(
            f"tune-adapter extract needs the [extract] extra ({exc.name} is missing): "
            'pip install -e ".[extract]"'
        ) from None
    from .display import console

    quiet_transformers()
    config = ExtractConfig(audio_dir=audio_dir, wav2vec_dir=wav2vec_dir, teacher=teacher, out=out,
                           layout=layout, device=device, val_fraction=val_fraction)
    with ExtractProgressBar() as bar:
        result = run_extract(config, bar)
    console.print(extract_summary(result))
    if result.skipped:
        console.print(skipped_table(result))


@app.command()
@user_errors
def results(
    experiment: Experiment = None,
    epochs: Annotated[bool, typer.Option("--epochs", help="One row per trial per epoch")] = False,
    format: Annotated[str, typer.Option(help="table, csv or json")] = "table",
):
    """Print an experiment's trials (or epochs) from its Parquet files."""
    from .display import console, frame_table
    from .results import open_experiment, read_epochs, read_trials

    if format not in ("table", "csv", "json"):
        raise UserError(f"--format {format!r} is unknown: use table, csv or json")
    folder, _ = open_experiment(experiment)
    frame = read_epochs(folder) if epochs else read_trials(folder)
    if format == "csv":
        print(frame.to_csv(index=False), end="")
    elif format == "json":
        print(frame.to_json(orient="records", indent=1))
    else:
        console.print(frame_table(frame, title=str(folder)))


MergeInto = Annotated[Optional[Path], typer.Option(help="InfiniteTalk weights file to copy with audio_proj.* replaced")]
MergedFile = Annotated[Optional[Path], typer.Option(help="Where the merged copy goes [default: OUT/<name of --merge-into>]")]
AllowConfigChange = Annotated[bool, typer.Option(help="Merge even when W or S change audio_proj's shapes (writes the config InfiniteTalk then needs)")]


@app.command()
@user_errors
def best(
    experiment: Experiment = None,
    top: Annotated[int, typer.Option(help="Trials to list")] = 5,
    export: Annotated[Optional[Path], typer.Option(help="Export the best trial's best checkpoint here")] = None,
    merge_into: MergeInto = None,
    merged_file: MergedFile = None,
    allow_config_change: AllowConfigChange = False,
):
    """The best trials of an experiment; with --export, the winner as InfiniteTalk weights."""
    from .display import console
    from .results import best_trial, open_experiment, read_epochs, read_trials
    from .search.live import top_trials_table

    folder, info = open_experiment(experiment)
    trials = read_trials(folder)
    console.print(f"experiment {folder}", soft_wrap=True)
    console.print(top_trials_table(trials, info.params, top, f"top {top} trials"))
    if export is None:
        if merge_into is not None:
            raise UserError("--merge-into needs --export DIR (the merged copy is written there)")
        return
    winner = best_trial(trials, read_epochs(folder), folder)
    epoch, best_epoch = winner["export_epoch"], winner["best_epoch"]
    best_epoch = None if best_epoch != best_epoch else int(best_epoch)  # NaN: no epoch yet
    record = {"experiment": str(folder), "trial_id": winner["trial_id"], "status": winner["status"],
              "epoch": epoch, "best_epoch": best_epoch, "parameters": {p: winner[p] for p in info.params},
              "metrics": {k: winner[f"export_{k}"] for k in ("val_l1", "val_mse", "val_cos")}}
    note = "" if epoch == best_epoch else f" (its best epoch, {best_epoch}, has no checkpoint)"
    console.print(f"exporting trial {winner['trial_id']} at epoch {epoch}, val_l1 "
                  f"{winner['export_val_l1']:.4f}{note}", soft_wrap=True)
    write_export(Path(winner["export_checkpoint"]), export, record, merge_into, merged_file, allow_config_change)


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint folder, or a train --output-dir (its newest checkpoint)")],
    out: Annotated[Path, typer.Option(help="Folder for audio_proj.safetensors and adapter_config.json")],
    merge_into: MergeInto = None,
    merged_file: MergedFile = None,
    allow_config_change: AllowConfigChange = False,
):
    """Export a trainer checkpoint as InfiniteTalk's audio_proj (and merge it into its weights)."""
    from .checkpoint import latest_checkpoint
    from .errors import ConfigError
    from .export import checkpoint_info

    try:
        folder = latest_checkpoint(checkpoint)
    except ConfigError:
        raise ConfigError(f"--checkpoint {checkpoint}: no checkpoint there (nor under its checkpoints/)") from None
    write_export(folder, out, checkpoint_info(folder), merge_into, merged_file, allow_config_change)


def write_export(folder: Path, out: Path, info: dict, merge_into: Path | None,
                 merged_file: Path | None, allow_config_change: bool) -> None:
    """Export a checkpoint (and merge it); a refused merge is found before anything is written."""
    from .display import console
    from .export import (export_adapter, merged_path, plan_merge, read_checkpoint_adapter,
                         window_warnings, write_merge)

    dims, tensors = read_checkpoint_adapter(folder)
    plan = None
    if merge_into is not None:
        plan = plan_merge(dims, tensors, merge_into, merged_file or merged_path(out, merge_into),
                          allow_config_change)
    exported = export_adapter(folder, out, info)
    console.print(f"exported {folder} -> {exported}", soft_wrap=True)
    if plan is None:
        for message in window_warnings(dims):
            console.print(f"[yellow]{message}", soft_wrap=True)
        return
    with console.status(f"writing {plan.out_file}"):
        messages = write_merge(plan)
    for message in messages:
        console.print(message, soft_wrap=True)
    console.print(f"merged: {plan.out_file}", soft_wrap=True)


@app.command()
@user_errors
def report(
    experiment: Annotated[Optional[Path], typer.Option(help="Experiment folder [default: the latest under results/]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write [default: EXPERIMENT/report.html]")] = None,
):
    """Write a one-file HTML report (curves, progress, parameters, importances, top trials)."""
    from .display import console
    from .report import write_report
    from .results import latest_experiment

    folder = experiment if experiment is not None else latest_experiment()
    with console.status(f"rendering the report of {folder}"):
        written = write_report(folder, out if out is not None else folder / "report.html")
    console.print(f"report: {written}", soft_wrap=True)


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
    search: Annotated[bool, typer.Option("--search", help="Instead: memory and overhead of two concurrent trials")] = False,
    asha: Annotated[bool, typer.Option("--asha", help="Instead: ASHA against the same trials unpruned")] = False,
    quality: Annotated[bool, typer.Option("--quality", help="Instead: the default search against random search, the guide's defaults and a grid, on 4 synthetic tasks")] = False,
    seeds: Annotated[int, typer.Option(help="--quality: search seeds per task")] = 3,
    faults: Annotated[bool, typer.Option("--faults", help="Instead: kill tiny searches at many moments, resume, check the records")] = False,
    work_dir: Annotated[Path, typer.Option(help="Data and experiments of --search/--asha")] = Path("results/bench"),
    trials: Annotated[int, typer.Option(help="--search: InfiniteTalk-sized trials, two at a time (16: a default search's size)")] = 16,
    checkpoint_every: Annotated[int, typer.Option(help="--search: checkpoint every N epochs")] = 1,
):
    """Time the trainer against its floor and a straightforward trainer; report RSS and padding.

    --search runs InfiniteTalk-sized trials two at a time through Ray Tune; --asha runs the
    default search with ASHA and then the same 16 configurations without pruning; --faults
    SIGKILLs tiny searches at chosen moments and resumes them."""
    from .bench.trainer import BenchSpec, run_bench
    from .display import bench_table, console, sections_table

    if quality:
        from .bench.quality import bench_quality, quality_sections

        with console.status("benchmarking: search quality (real searches; about 40 minutes on 2 cores)"):
            results = bench_quality(work_dir / "quality", Path("search_spaces"), seeds=seeds)
        console.print(sections_table("tune-adapter bench: search quality", quality_sections(results)))
        return
    if faults:
        bench_faults_command(work_dir)
        return
    if search or asha:
        from .bench.asha import bench_asha
        from .bench.search import bench_search

        if search:
            what = "search cost"
            run = partial(bench_search, work_dir, Path("search_spaces") / "bench.py", trials=trials,
                          checkpoint_every=checkpoint_every)
        else:
            what = "ASHA against no pruning"
            run = partial(bench_asha, work_dir, Path("search_spaces") / "default.py")
        with console.status(f"benchmarking: {what} (real searches; minutes)"):
            sections = run()
        console.print(sections_table(f"tune-adapter bench: {what}", sections))
        return

    spec = BenchSpec(dims=dims, frames=frames, batch_size=batch_size, steps=steps, device=device,
                     mixed_precision=mixed_precision, mixed_lengths=lengths)
    with console.status("benchmarking (each trainer in its own process)"):
        report = run_bench(spec)
    console.print(bench_table(report))


def bench_faults_command(work_dir: Path) -> None:
    from .display import console
    from .bench.faults import BENCH_KILLS, bench_faults, failure_lines, outcomes_table

    what = f"{len(BENCH_KILLS)} kill points, each a search killed and resumed (minutes)"
    with console.status(f"benchmarking: {what}") as status:
        search, outcomes = bench_faults(
            work_dir / "faults", Path("search_spaces") / "tiny.py",
            progress=lambda o: status.update(f"benchmarking: kill point {' > '.join(o.kills)} done"))
    console.print(outcomes_table(search, outcomes))
    for line in failure_lines(search, outcomes):
        console.print(line, soft_wrap=True, style="red", markup=False)
    console.print(f"experiments: {search.storage}", soft_wrap=True)
    if not all(o.ok(search.num_samples) for o in outcomes):
        raise typer.Exit(1)


def main() -> None:
    # Where the process starts, before torch allocates (cpu_tuning.py): CPU tuning's huge
    # pages, also inherited by a local Ray's workers.
    from .cpu_tuning import request_huge_pages

    request_huge_pages()
    app()
