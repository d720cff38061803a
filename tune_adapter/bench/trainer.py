"""`tune-adapter bench`: how fast the trainer is, against its floor and a naive trainer.

Each measurement runs in a fresh process, so its peak RSS (`ru_maxrss`) is its own:
- fast: the real trainer (`Run.train_step`), its phases timed by torch.profiler;
- floor: the same step's matrix products alone (floor.py) plus the step's fused AdamW;
- straightforward: `straightforward.StraightforwardTrainer` on the same clips.
Padding is computed in-process: one epoch of the batch sampler over mixed lengths, with
and without length bucketing.

A report is a list of sections of rows, so another measurement (say, of a whole search)
adds a section without touching the others.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ..adapter import AdapterDims, AudioProjModel
from ..config import TrainConfig
from ..data import BatchSampler, load_data, padded_fraction, read_manifest
from .. import cpu_tuning
from ..errors import ConfigError
from ..runtime import resolve_runtime
from ..synth import SynthSpec, write_synth
from ..windows import WindowSpec, n_latents
from .floor import WEIGHT_LAYERS, clock, floor_operands, multiply, step_operands, time_step_products
from .report import MB, BenchReport, Row, Section, verdict
from .straightforward import StraightforwardTrainer

RSS_FACTOR, RSS_ALLOWANCE = 1.3, 400 * MB  # target: peak RSS <= 1.3 x state + 400 MB


@dataclass(frozen=True)
class BenchSpec:
    dims: str = "infinitetalk"
    frames: int = 81
    batch_size: int = 4
    steps: int = 10
    warmup: int = 2
    device: str = "cpu"
    mixed_precision: bool = True
    batches: int = 2  # distinct batches of clips the trainers cycle through
    mixed_lengths: tuple[int, int] = (21, 121)  # padding rows: clip lengths drawn from here
    mixed_clips: int = 1024
    seed: int = 0

    def __post_init__(self):
        for name in ("frames", "batch_size", "steps", "batches", "mixed_clips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        low, high = self.mixed_lengths
        if not 1 <= low <= high:
            raise ConfigError(f"--lengths {low} {high}: need 1 <= low <= high")

    def synth_spec(self) -> SynthSpec:
        # One validation batch: enough to time validation without mapping more data.
        return SynthSpec(dims=self.dims, train_clips=self.batch_size * self.batches,
                         val_clips=self.batch_size,
                         min_frames=self.frames, max_frames=self.frames, seed=self.seed)

    def train_config(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, mixed_precision=self.mixed_precision,
                           device=self.device, seed=self.seed)


@dataclass
class StepTimes:
    """Median seconds per step of each phase, over the timed steps."""

    gather: float
    forward: float
    backward: float
    clip: float
    adamw: float
    step: float

    @property
    def optimizer(self) -> float:
        return self.clip + self.adamw


@dataclass
class TrainerResult:
    clips_per_s: float
    peak_rss: int  # bytes
    times: StepTimes | None = None
    val_clips_per_s: float | None = None
    products: float | None = None  # seconds: the step's matrix products alone
    step_over_floor: float | None = None  # median over steps of step / (products + AdamW)


def run_bench(spec: BenchSpec, work_dir: Path | None = None) -> BenchReport:
    resolve_runtime(spec.device, spec.mixed_precision)  # a bad --device fails here, not in a child
    with tempfile.TemporaryDirectory(prefix="tune-adapter-bench-", dir=work_dir) as tmp:
        folder = Path(tmp)
        write_synth(folder / "data", spec.synth_spec())
        open_data(folder)  # packs once here, so the children only map the pack
        tuned = cpu_tuning.huge_pages_env() if spec.train_config().cpu_tuning else {}
        fast = in_fresh_process(measure_fast, spec, folder, env=tuned)
        bf16_ratio = in_fresh_process(measure_bf16_products, spec, env=tuned)
        naive = in_fresh_process(measure_straightforward, spec, folder, False,
                                 env={cpu_tuning.THP_ENV: "0", cpu_tuning.KEEP_ENV: "0"})
        naive_tuned = in_fresh_process(measure_straightforward, spec, folder, True, env=tuned)
    state = model_state_bytes(spec.synth_spec().adapter_dims())
    huge_pages = tuned.get(cpu_tuning.THP_ENV, "0").strip() not in ("", "0")
    return BenchReport(spec, describe_machine(spec.device, huge_pages), [
        speed_section(spec, fast, naive, naive_tuned),
        step_section(fast, bf16_ratio),
        memory_section(state, fast, naive),
        padding_section(spec),
    ])


def in_fresh_process(fn, *args, env: dict | None = None):
    """`fn(*args)` in a new interpreter, whose peak RSS is its own, with `env` set in it."""
    # A spawned interpreter copies this environment when it starts.
    with mock.patch.dict(os.environ, env or {}), \
            ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --- the real trainer ---------------------------------------------------------------

def open_data(folder: Path):
    data = folder / "data"
    return load_data(data / "train.json", data / "val.json", cache_root=folder / "cache")


def measure_fast(spec: BenchSpec, folder: Path) -> TrainerResult:
    """The trainer's own step: timed whole, with its floor measured inside it; then a few
    more steps under torch.profiler, whose `record_function` ranges give the phases.

    The floor runs in an optimizer step hook, after AdamW, into the spent gradients: its
    outputs take no memory of their own, and it sees the same load from whatever else
    runs on the machine as the step does; the ratio is taken step by step. Peak RSS is
    read before the profiler, which keeps memory of its own.
    """
    from ..trainer import Run

    data = open_data(folder)
    run = Run(spec.train_config(), data)
    device = run.runtime.device
    run.model.train()
    batches = endless(run.train_loader)
    for _ in range(spec.warmup):
        run.train_step(next(batches).to(device, non_blocking=True))
    gathers, steps, adamw, products, hooked = [], [], [], [], []
    batch, adamw_started = None, 0.0

    def before_adamw(*_):
        nonlocal adamw_started
        adamw_started = clock(device)

    def after_adamw(*_):
        started = clock(device)
        adamw.append(started - adamw_started)
        products.append(time_step_products(run, floor_operands(run, batch)))
        hooked.append(clock(device) - started)  # the floor and the making of its operands

    hooks = [run.optimizer.register_step_pre_hook(before_adamw),
             run.optimizer.register_step_post_hook(after_adamw)]
    for _ in range(spec.steps):
        t0 = clock(device)
        batch = next(batches).to(device, non_blocking=True)
        t1 = clock(device)
        run.train_step(batch)
        gathers.append(t1 - t0)
        steps.append(clock(device) - t0 - hooked[-1])
    for hook in hooks:
        hook.remove()
    started = time.perf_counter()
    run.validate()
    val_seconds = time.perf_counter() - started
    rss = peak_rss()
    run.model.train()
    with profile(activities=profiler_activities(device)) as prof:
        for _ in range(min(spec.steps, PROFILED_STEPS)):
            run.train_step(next(batches).to(device, non_blocking=True))
    phases = phase_seconds(prof, device)
    times = StepTimes(statistics.median(gathers), *(statistics.median(phases[p]) for p in PHASES),
                      step=statistics.median(steps))
    ratios = [step / (floor + a) for step, floor, a in zip(steps, products, adamw)]
    return TrainerResult(spec.batch_size / times.step, rss, times, len(data.val) / val_seconds,
                         statistics.median(products), statistics.median(ratios))


PROFILED_STEPS = 5
# The `record_function` ranges of `Run.train_step`, in the order of `StepTimes`' fields.
PHASES = ("forward + loss", "backward", "grad clip", "fused AdamW")


def profiler_activities(device: torch.device) -> list:
    if device.type == "cuda":
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    return [ProfilerActivity.CPU]


def phase_seconds(prof, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each phase, step by step: on a GPU, the span of the range's kernels
    (the CPU only queues them) where the profiler recorded it; else the range itself."""
    spans: dict = {kind: {name: [] for name in PHASES} for kind in (DeviceType.CPU, DeviceType.CUDA)}
    for event in prof.events():
        if event.name in PHASES and event.device_type in spans:
            spans[event.device_type][event.name].append(event.time_range)
    kernels = spans[DeviceType.CUDA]
    chosen = kernels if device.type == "cuda" and all(kernels.values()) else spans[DeviceType.CPU]
    return {name: [r.elapsed_us() / 1e6 for r in sorted(ranges, key=lambda r: r.start)]
            for name, ranges in chosen.items()}


def endless(loader):
    while True:
        yield from loader


# --- the floor ----------------------------------------------------------------------

def measure_bf16_products(spec: BenchSpec, repeats: int = 7) -> float:
    """Time of the step's products on bf16 tensors over their time in the step's precision.

    The floor uses the step's own precision (CPU: float32 tensors, bf16 inside oneDNN);
    this says how much lower a floor of products on bf16 tensors (no conversion) would be.
    """
    runtime = resolve_runtime(spec.device, spec.mixed_precision)
    device, dims = runtime.device, spec.synth_spec().adapter_dims()
    model = AudioProjModel(dims).to(device)
    weights = {name: getattr(model, name).weight.detach() for name in WEIGHT_LAYERS}
    dtype = runtime.autocast_dtype or torch.float32
    n_latter = n_latents(spec.frames, dims.vae_scale) - 1
    same = step_operands(dims, spec.batch_size, n_latter, weights, dtype, device)
    bf16 = step_operands(dims, spec.batch_size, n_latter, weights, torch.bfloat16, device)
    ratios = []
    for i in range(2 + repeats):  # alternated, so both see the same machine load
        started = clock(device)
        with runtime.autocast():
            multiply(same)
        middle = clock(device)
        multiply(bf16)
        if i >= 2:
            ratios.append((clock(device) - middle) / (middle - started))
    return statistics.median(ratios)


# --- the straightforward trainer ----------------------------------------------------

def measure_straightforward(spec: BenchSpec, folder: Path, package_settings: bool) -> TrainerResult:
    """The straightforward trainer; with `package_settings`, under the fast trainer's
    memory settings (huge pages come from the environment `run_bench` gives the process)."""
    if package_settings:
        cpu_tuning.start_run()
    config = spec.train_config()
    entries = read_manifest(folder / "data" / "train.json")
    torch.manual_seed(config.seed)
    model = AudioProjModel(spec.synth_spec().adapter_dims())
    trainer = StraightforwardTrainer(model, WindowSpec(config.audio_window, config.vae_scale),
                                     config.lr, config.weight_decay, config.grad_clip)
    batches = [entries[i:i + spec.batch_size] for i in range(0, len(entries), spec.batch_size)]
    seconds = []
    for i in range(spec.warmup + spec.steps):
        started = time.perf_counter()
        trainer.step(batches[i % len(batches)])
        if i >= spec.warmup:
            seconds.append(time.perf_counter() - started)
    step = statistics.median(seconds)
    return TrainerResult(spec.batch_size / step, peak_rss())


# --- padding ------------------------------------------------------------------------

def padding_fractions(spec: BenchSpec) -> tuple[float, float]:
    """Padded fraction of one epoch over mixed lengths: (no bucketing, bucketing)."""
    low, high = spec.mixed_lengths
    gen = torch.Generator().manual_seed(spec.seed)
    lengths = torch.randint(low, high + 1, (spec.mixed_clips,), generator=gen)
    return tuple(
        padded_fraction(BatchSampler(lengths, spec.batch_size, spec.seed, bucket=b).batches(), lengths)
        for b in (False, True)
    )


# --- the report ---------------------------------------------------------------------

def model_state_bytes(dims: AdapterDims) -> int:
    """Parameters, gradients and AdamW's two moments, all float32."""
    with torch.device("meta"):
        count = AudioProjModel(dims).parameter_count()
    return 4 * 4 * count


def describe_machine(device: str, huge_pages: bool = False) -> str:
    import platform

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    pages = "huge pages" if huge_pages else "4 KiB pages"
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {pages}"


def speed_section(spec: BenchSpec, fast: TrainerResult, naive: TrainerResult,
                  naive_tuned: TrainerResult) -> Section:
    ratio = fast.clips_per_s / naive.clips_per_s
    return Section("Speed", [
        Row("clips/s, fast trainer", fast.clips_per_s, "clips/s"),
        Row("clips/s, straightforward trainer", naive.clips_per_s, "clips/s",
            "torch.load per clip, all T windows, literal loss, fp32, AdamW foreach=False; "
            "PyTorch's default memory settings"),
        Row("fast / straightforward", ratio, "x", verdict(ratio >= 4, "target >= 4x")),
        Row("clips/s, straightforward, this package's memory settings", naive_tuned.clips_per_s,
            "clips/s", "huge pages + kept heap (cpu_tuning.py), as the fast trainer runs"),
        Row("fast / straightforward with those settings", fast.clips_per_s / naive_tuned.clips_per_s,
            "x", "what the trainer's own code gains, settings aside"),
        Row("validation clips/s, fast trainer", fast.val_clips_per_s, "clips/s", "no_grad"),
    ])


def step_section(fast: TrainerResult, bf16_ratio: float) -> Section:
    t = fast.times
    floor = fast.products + t.adamw
    return Section("Step (median)", [
        Row("step", 1000 * t.step, "ms"),
        Row("  batch gather", 1000 * t.gather, "ms", "index_select from the mapped pack"),
        Row("  forward + loss", 1000 * t.forward, "ms"),
        Row("  backward", 1000 * t.backward, "ms"),
        Row("  grad clip", 1000 * t.clip, "ms"),
        Row("  fused AdamW", 1000 * t.adamw, "ms"),
        Row("floor", 1000 * floor, "ms", "the step's matrix products + one fused AdamW step"),
        Row("  matrix products", 1000 * fast.products, "ms",
            "fwd + bwd of proj1, proj1_vf, proj2, proj3; same shapes and precision"),
        Row("step / floor", fast.step_over_floor, "x",
            verdict(fast.step_over_floor <= 1.5, "target <= 1.5x; median of per-step ratios")),
        Row("products: bf16 tensors / step's precision", bf16_ratio, "x",
            "below 1: a floor on bf16 tensors would be that much lower"),
    ])


def memory_section(state: int, fast: TrainerResult, naive: TrainerResult) -> Section:
    target = RSS_FACTOR * state + RSS_ALLOWANCE
    return Section("Memory", [
        Row("model state", state / MB, "MB", "params + grads + 2 AdamW moments, fp32"),
        Row("peak RSS, fast trainer", fast.peak_rss / MB, "MB",
            verdict(fast.peak_rss <= target, f"target <= 1.3 x state + 400 MB = {target / MB:.0f} MB")),
        Row("peak RSS / target", fast.peak_rss / target, "x"),
        Row("peak RSS, straightforward trainer", naive.peak_rss / MB, "MB"),
    ])


def padding_section(spec: BenchSpec) -> Section:
    plain, bucketed = padding_fractions(spec)
    low, high = spec.mixed_lengths
    where = f"{spec.mixed_clips} clips of {low}..{high} frames, batch {spec.batch_size}"
    return Section("Padding (one epoch)", [
        Row("padded fraction, no bucketing", 100 * plain, "%", where),
        Row("padded fraction, length bucketing", 100 * bucketed, "%", where),
    ])
