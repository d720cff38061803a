"""GPU figures of search trials: clips/s per trial, peak GPU memory per trial, trials per GPU.

A search at `--gpus-per-trial 1/k` runs k trials side by side on one GPU, each process
capped at 1/k of its memory (`torch.cuda.set_per_process_memory_fraction`, as trials are).
This runs k real trainers (`trainer.Run`, InfiniteTalk's dims by default) at once on one
GPU for k = 1, 2, 4, ..., each in its own process with that cap, times the same number of
training steps in each after a shared start, and prints per k: clips/s of each trial, of
the GPU in all, and each trial's peak allocated and reserved GPU memory. A trial that runs
out of memory at its share is shown as OOM: that k does not fit at this batch size.

    python docs/gpu_figures.py                          # cuda, InfiniteTalk's dims, k = 1 2 4 8
    python docs/gpu_figures.py --trials-per-gpu 1 2 --batch-size 8 --no-mixed-precision
    python docs/gpu_figures.py --device cpu --dims tiny --steps 3 --trials-per-gpu 1 2   # smoke run

Put the printed table in docs/performance.md with the GPU's name and the torch version.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import torch

from tune_adapter.bench.trainer import BenchSpec, clock, describe_machine, endless, open_data
from tune_adapter.synth import write_synth

MB = 2**20


def one_trial(spec: BenchSpec, folder: Path, share: float, start, results) -> None:
    """One trial's process: its cap, warm-up steps, then timed steps once all have warmed up."""
    from tune_adapter.trainer import Run

    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(share, device)
    try:
        run = Run(spec.train_config(), open_data(folder))
        run.model.train()
        batches = endless(run.train_loader)
        for _ in range(spec.warmup):
            run.train_step(next(batches).to(device, non_blocking=True))
        start.wait()  # all trials time the same stretch, side by side
        began = clock(device)
        for _ in range(spec.steps):
            run.train_step(next(batches).to(device, non_blocking=True))
        seconds = clock(device) - began
    except torch.cuda.OutOfMemoryError:
        start.abort()  # the others must not wait for a trial that has stopped
        results.put({"oom": True})
        return
    peak = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)) \
        if device.type == "cuda" else (0, 0)
    results.put({"oom": False, "clips_per_s": spec.batch_size * spec.steps / seconds,
                 "allocated": peak[0], "reserved": peak[1]})


def trials_side_by_side(spec: BenchSpec, folder: Path, k: int) -> list[dict]:
    ctx = get_context("spawn")  # CUDA cannot be used in a forked child
    start, results = ctx.Barrier(k), ctx.Queue()
    processes = [ctx.Process(target=one_trial, args=(spec, folder, 1.0 / k, start, results))
                 for _ in range(k)]
    for p in processes:
        p.start()
    found = [results.get() for _ in processes]
    for p in processes:
        p.join()
    return found


def row(k: int, found: list[dict]) -> str:
    if any(r["oom"] for r in found):
        return f"{k:>3}  OOM at a 1/{k} share"
    speeds = [r["clips_per_s"] for r in found]
    allocated = max(r["allocated"] for r in found) / MB
    reserved = max(r["reserved"] for r in found) / MB
    return (f"{k:>3}  {statistics.median(speeds):>14.1f}  {min(speeds):>9.1f}  {sum(speeds):>11.1f}"
            f"  {allocated:>12.0f}  {reserved:>11.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-gpu", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dims", default="infinitetalk")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here")
    spec = BenchSpec(dims=args.dims, frames=args.frames, batch_size=args.batch_size, steps=args.steps,
                     device=args.device, mixed_precision=args.mixed_precision)
    machine = describe_machine(spec.device)
    machine += "" if torch.__version__ in machine else f", torch {torch.__version__}"
    print(f"{machine}: {spec.dims} dims, "
          f"{spec.frames} frames, batch {spec.batch_size}, "
          f"{'mixed' if spec.mixed_precision else 'full'} precision, {spec.steps} timed steps")
    print("  k  clips/s, median  trial min  GPU in all  peak alloc MB  reserved MB")
    with tempfile.TemporaryDirectory(prefix="tune-adapter-gpu-figures-") as tmp:
        folder = Path(tmp)
        write_synth(folder / "data", spec.synth_spec())
        open_data(folder)  # packs once here, so the trials only map the pack
        for k in args.trials_per_gpu:
            started = time.perf_counter()
            print(row(k, trials_side_by_side(spec, folder, k)),
                  f"  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
