"""What a search costs beyond its trainers: memory of concurrent trials, time outside them.

A real search runs (two trials at once on two cores by default) while a sampler thread on
the driver reads the memory of every trial process from `/proc`: RSS, and PSS, which counts
pages shared between processes (the memory-mapped pack, shared libraries) once in total
instead of once per process. The time outside the trainers is the search's wall time times
its concurrent slots, less the time the trainers spent in their epochs (training and
validation), as a fraction: Ray start-up, scheduling, actor start, checkpoint I/O and idle
slots all count as outside.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..records.results import read_epochs, read_trials
from ..search.driver import run_search
from ..search.options import SearchOptions

TRIAL_PROCESS = b"ImplicitFunc"  # Ray names a function trainable's actor process so


@dataclass
class MemorySample:
    processes: int
    rss: int  # bytes, summed: shared pages counted in every process
    pss: int  # bytes, summed: shared pages split between the processes that map them


def trial_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if TRIAL_PROCESS in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc/PID/smaps_rollup; zeros for a process that is gone."""
    values = {}
    try:
        for line in (Path("/proc") / str(pid) / "smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


@dataclass
class MemorySampler:
    interval: float = 1.0
    samples: list[MemorySample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            pids = trial_processes()
            sizes = [memory_of(p) for p in pids]
            self.samples.append(MemorySample(len(pids), sum(r for r, _ in sizes), sum(p for _, p in sizes)))

    def peak(self, busiest: int) -> MemorySample | None:
        """The largest PSS among samples taken while `busiest` trial processes were alive."""
        full = [s for s in self.samples if s.processes >= busiest]
        return max(full, key=lambda s: s.pss) if full else None


@dataclass
class SearchCost:
    wall_seconds: float
    trainer_seconds: float
    slots: int
    peak: MemorySample | None
    data_bytes: int
    trials: int

    @property
    def outside_fraction(self) -> float:
        return 1 - self.trainer_seconds / (self.wall_seconds * self.slots)


def pack_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.f32"))


def measure_search(options: SearchOptions) -> SearchCost:
    from ..search.driver import prepare_data

    data = prepare_data(options)  # built before the clock starts; the search reuses it
    data_bytes = pack_bytes(data.train.root) + pack_bytes(data.val.root)
    sampler = MemorySampler()
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    started = time.monotonic()
    outcome = run_search(options)
    wall = time.monotonic() - started
    sampler.stop.set()
    thread.join()
    failed = read_trials(outcome.experiment_dir).query("status == 'error'")
    if len(failed):
        raise UserError(f"a benchmark trial failed: {failed['error'].iloc[0]}")
    epochs = read_epochs(outcome.experiment_dir)
    slots = options.max_concurrent or 1
    return SearchCost(wall, float(epochs["epoch_seconds"].sum()), slots, sampler.peak(slots),
                      data_bytes, outcome.num_samples)


def search_sections(cost: SearchCost, model_state: int, batch_bytes: int,
                    runtime: MemorySample | None = None) -> list:
    """Memory of the concurrent trials against one copy of the data plus their own state;
    time outside the trainers. `runtime`: the same trial processes' memory on tiny dims
    (Python, torch, the Ray worker, this package), which no model or data accounts for."""
    from .report import MB, Row, Section, verdict

    budget = 1.15 * (cost.data_bytes + cost.slots * (model_state + batch_bytes))
    rows = [
        Row("trials at once", cost.slots, "", f"{cost.trials} trials in all"),
        Row("packed data (one copy)", cost.data_bytes / MB, "MB", "audio.f32 + targets.f32, mapped"),
        Row("model + optimizer + batch, per trial", (model_state + batch_bytes) / MB, "MB"),
    ]
    if cost.peak is not None:
        target = f"1.15 x (data + {cost.slots} x state) = {budget / MB:.0f} MB"
        rows.append(Row("total PSS of the trial processes", cost.peak.pss / MB, "MB",
                        verdict(cost.peak.pss <= budget, f"target <= {target}")))
        if runtime is not None:
            added = cost.peak.pss - runtime.pss
            rows += [
                Row("  of which the processes' runtime", runtime.pss / MB, "MB",
                    "the same search on tiny dims: Python, torch, Ray worker, this package"),
                Row("  of which data, models and training", added / MB, "MB",
                    verdict(added <= budget, f"target <= {target}")),
            ]
        rows.append(Row("total RSS (shared pages counted per process)", cost.peak.rss / MB, "MB"))
    rows += [
        Row("search wall time", cost.wall_seconds, "s", "Ray start to the last trial's end"),
        Row("time inside the trainers (epochs)", cost.trainer_seconds, "s", "summed over trials"),
        Row("outside the trainers", 100 * cost.outside_fraction, "%",
            verdict(cost.outside_fraction < 0.15, "target < 15% (Ray start, scheduling, checkpoint I/O, idle)")),
        Row("trial length", cost.trainer_seconds / cost.trials, "s", "mean time in the trainer per trial"),
    ]
    return [Section(f"Search: {cost.trials} trials, {cost.slots} at a time, sharing one packed cache", rows)]


def bench_options(work: Path, space: Path, dims: str, trials: int, epochs: int, clips: int,
                  checkpoint_every: int) -> SearchOptions:
    """A search of `trials` full-length trials (no pruning), two at once, on synthetic data."""
    from ..synth import SynthSpec, write_synth

    data = work / f"data-{dims}-{clips}"
    if not (data / "train.json").is_file():
        write_synth(data, SynthSpec(dims=dims, train_clips=clips, val_clips=clips // 3,
                                    min_frames=81, max_frames=81))
    return SearchOptions(space=space, manifest=data / "train.json", val_manifest=data / "val.json",
                         num_samples=trials, max_epochs=epochs, grace_period=epochs,
                         cpus_per_trial=1, max_concurrent=2, storage=work / "results",
                         name=f"search-{dims}-{time.time_ns()}", quiet=True, cache_dir=work / "cache",
                         checkpoint_every=checkpoint_every, mixed_precision=True)


def measure_and_remove(options: SearchOptions) -> SearchCost:
    """`measure_search`, then the experiment goes: each trial keeps a checkpoint of up to
    0.9 GB at InfiniteTalk's dims, and benchmarks are run again and again."""
    try:
        return measure_search(options)
    finally:
        shutil.rmtree(options.experiment_dir, ignore_errors=True)


def bench_search(work: Path, space: Path, trials: int = 16, epochs: int = 8, clips: int = 56,
                 checkpoint_every: int = 1) -> list:
    """InfiniteTalk-sized trials, two at once, on synthetic data; the report's sections.

    First the same search on tiny dims (two short trials), whose trial processes hold
    everything but the model, the optimizer and the data: the runtime's own memory.
    """
    from ..adapter import AdapterDims
    from .trainer import model_state_bytes

    runtime = measure_and_remove(bench_options(work, space, "tiny", 2, 2, 16, 1)).peak
    cost = measure_and_remove(bench_options(work, space, "infinitetalk", trials, epochs, clips,
                                            checkpoint_every))
    dims = AdapterDims()
    return search_sections(cost, model_state_bytes(dims), batch_bytes(dims, batch=4, frames=81), runtime)


def batch_bytes(dims, batch: int, frames: int) -> int:
    """A padded batch of 81-frame clips: adapter inputs plus per-frame targets, float32."""
    latents = 1 + -(-(frames - 1) // dims.vae_scale)
    rows = dims.first_width + (latents - 1) * dims.latter_width
    inputs = batch * rows * dims.layers * dims.channels * 4
    targets = batch * frames * dims.context_tokens * dims.output_dim * 4
    return inputs + targets
