"""rich views for the CLI: training progress, data summaries."""

from __future__ import annotations

import math
from contextlib import contextmanager
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..data import PackedClips
from ..data.shards import DTYPE_NAMES

console = Console()
FPS = 25


def fit_console_to_terminal() -> None:
    """rich reads COLUMNS once, when a console is made: read it again for each command (one
    process may run several, as tests do), else the terminal's own width."""
    columns = os.environ.get("COLUMNS", "")
    console.width = int(columns) if columns.isdigit() else None


def shown_path(path) -> str:
    """A path as short as it can be copied: relative to this folder when it lies below it
    (a URI as it is)."""
    if isinstance(path, str) and "://" in path:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def fail(message: str) -> None:
    """A user error: one plain line (never wrapped by rich) on stderr."""
    print(f"error: {message}", file=sys.stderr)


def format_metrics(metrics: dict) -> str:
    parts = [f"epoch {metrics['epoch']}" + (" (the start)" if metrics["epoch"] == 0 else "")]
    for key in ("train_loss", "val_l1", "val_mse", "val_cos"):
        if key in metrics and not math.isnan(metrics[key]):
            parts.append(f"{key} {metrics[key]:.4f}")
    if "epoch_seconds" in metrics:
        parts.append(f"{metrics['epoch_seconds']:.1f}s")
    return "  ".join(parts)


class ProgressView:
    """A rich progress display that is shown while the `with` block runs."""

    def __init__(self, label: str, detail: str, out: Console = console):
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(detail), TimeElapsedColumn(), console=out)
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()


class TrainProgressBar(ProgressView):
    """One bar per epoch, a metrics line when it ends (the trainer's Progress protocol)."""

    def __init__(self, out: Console = console):
        super().__init__("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}",
                         "{task.fields[loss]}", out)

    def epoch_started(self, epoch, epochs, steps):
        self.task = self.progress.add_task("train", total=steps, epoch=epoch, epochs=epochs, loss="")

    def step_done(self, loss):
        fields = {"loss": f"loss {loss:.4f}"} if loss is not None else {}
        self.progress.update(self.task, advance=1, **fields)

    def epoch_done(self, metrics):
        if self.task is not None:  # epoch 0 has no bar: it only validates
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.console.print(format_metrics(metrics))


def pack_summary(pack: PackedClips, title: str, location: str | None = None) -> Table:
    frames = pack.frames.tolist()
    weights = pack.weights.tolist()
    shapes = pack.shapes
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if pack.is_frame_layout():
        layout = "per frame [T, K, D] (any vae-scale)"
    else:
        layout = f"per latent [n_lat, K, D] (vae-scale {', '.join(map(str, pack.latent_scales()))})"
    rows = [
        ("clips", f"{len(pack)}"),
        ("frames", f"{sum(frames)} ({sum(frames) / FPS / 3600:.3f} h at {FPS} fps)"),
        ("frames per clip", f"min {min(frames)}, median {statistics.median(frames):g}, max {max(frames)}"),
        ("layout", layout),
        ("audio L x C", f"{shapes.layers} x {shapes.channels}"),
        ("tokens K x D", f"{shapes.tokens} x {shapes.token_dim}"),
        ("weights", f"min {min(weights):g}, mean {statistics.fmean(weights):g}, max {max(weights):g}"),
        ("stored", f"audio {DTYPE_NAMES[pack.audio.dtype]}, targets {DTYPE_NAMES[pack.targets.dtype]}"
                   f" ({len(pack.targets)} distinct rows); {len(pack.audio.parts)} shard(s), "
                   f"{pack.stored_bytes / 2**20:.1f} MiB, {pack.stored_bytes / max(sum(frames), 1):.0f} "
                   "bytes per video frame"),
        ("pack", location or str(pack.root)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@contextmanager
def pack_progress(clips: int):
    """A bar over the clips being validated and packed; yields the callback a clip advances."""
    with Progress(TextColumn("packing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("pack", total=clips)
        yield lambda: bar.advance(task)


def bench_table(report) -> Table:
    """A `bench.report.BenchReport` as one table, a heading row per section."""
    spec = report.spec
    title = (f"tune-adapter bench: {spec.dims} dims, {spec.frames}-frame clips, batch "
             f"{spec.batch_size}, {spec.steps} steps, {spec.device}, "
             f"{'mixed precision' if spec.mixed_precision else 'fp32'} ({report.machine})")
    return sections_table(title, report.sections)


def sections_table(title: str, sections) -> Table:
    """Benchmark sections (`bench.report.Section`) as one table, a heading row per section."""
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("note")
    for section in sections:
        table.add_row(f"[bold]{section.title}", "", "", "")
        for row in section.rows:
            table.add_row(row.name, format_value(row.value), row.unit, row.note)
    return table


def format_value(value: float) -> str:
    if value != value:  # NaN: not measured
        return "-"
    if abs(value) < 1:
        return f"{value:.4g}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
