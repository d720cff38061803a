"""Does the search beat not searching? `tune-adapter bench --quality`.

On synthetic tasks whose teachers differ (window W, scale S, per-frame or per-latent
targets, dataset size, label noise), each with search seeds 0..N-1:
(a) the default search (the shipped space for the targets, its constants, TPE + ASHA),
(b) random search with the same space, scheduler, baseline and budget,
(c) one run with the user guide's defaults (lr 1e-4, batch 2, W 5, S 4) for max epochs,
(d) a grid of 8 hand-picked configurations, each trained for max epochs.
(c) and (d) do not depend on the search seed: they run once per task. Reported: best
val_l1 of each, the ratios of (a) to the others, and the epochs each spent.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..records.results import read_epochs, read_trials
from ..synth import SynthSpec, write_synth
from .asha import train_without_pruning
from ..search.driver import ray_session, run_search
from ..search.options import SearchOptions, resolve_options

GUIDE = {"lr": 1e-4, "batch_size": 2, "audio_window": 5, "vae_scale": 4}
# A grid a careful user might try by hand: the learning rates either side of 1e-3, short
# and long windows, and (per-frame targets) the two VAE scales InfiniteTalk-like models use.
FRAME_GRID = [{"lr": lr, "batch_size": 4, "audio_window": w, "vae_scale": s}
              for lr in (3e-4, 3e-3) for w in (5, 9) for s in (2, 4)]
LATENT_GRID = [{"lr": lr, "batch_size": 4, "audio_window": w, "vae_scale": 4}
               for lr in (3e-4, 1e-3, 3e-3, 1e-2) for w in (3, 7)]


@dataclass(frozen=True)
class QualityTask:
    name: str
    synth: SynthSpec
    space: str = "default.py"  # the shipped space a user would pick for these targets

    @property
    def grid(self) -> list[dict]:
        return LATENT_GRID if self.synth.layout == "latent" else FRAME_GRID


TASKS = (
    QualityTask("W5 S4 frame 160 (quickstart)", SynthSpec()),
    QualityTask("W3 S2 frame 64 noisy", SynthSpec(teacher_window=3, teacher_scale=2, train_clips=64,
                                                  val_clips=24, label_noise=0.3, seed=1)),
    QualityTask("W9 S3 frame 320", SynthSpec(teacher_window=9, teacher_scale=3, train_clips=320,
                                             val_clips=48, seed=2)),
    QualityTask("W3 S4 latent 96 noisy", SynthSpec(layout="latent", teacher_window=3, train_clips=96,
                                                   val_clips=24, label_noise=0.1, seed=3),
                space="infinitetalk.py"),
)


@dataclass
class Outcome:
    best_val_l1: float
    epochs: int  # every trained epoch of every trial, the baseline's included
    baseline_epochs: int = 0  # of which the baseline's: exactly what (c) spends


@dataclass
class TaskResult:
    task: str
    guide: Outcome
    grid: Outcome  # the best configuration's value; epochs of the whole grid
    searches: dict[str, list[Outcome]] = field(default_factory=dict)  # "tpe"/"random" -> per seed

    def ratios(self, against: str) -> list[float]:
        tpe = self.searches["tpe"]
        if against in self.searches:
            return [a.best_val_l1 / b.best_val_l1 for a, b in zip(tpe, self.searches[against])]
        other = self.guide if against == "guide" else self.grid
        return [a.best_val_l1 / other.best_val_l1 for a in tpe]

    def epoch_share(self, baseline: bool = True) -> float:
        """(a)'s epochs over (d)'s; baseline=False leaves out the baseline's, (c)'s own."""
        tpe = self.searches["tpe"]
        return statistics.mean(a.epochs - (0 if baseline else a.baseline_epochs) for a in tpe) / self.grid.epochs


def outcome(folder: Path) -> Outcome:
    trials, epochs = read_trials(folder), trained_epochs(folder)
    baseline_ids = set(trials.loc[trials["baseline"], "trial_id"])
    return Outcome(float(trials["best_val_l1"].min()), len(epochs),
                   int(epochs["trial_id"].isin(baseline_ids).sum()))


def trained_epochs(folder: Path):
    """epochs.parquet without epoch 0 (the starting point, measured, not trained)."""
    epochs = read_epochs(folder)
    return epochs[epochs["epoch"] >= 1]


def task_options(task: QualityTask, work: Path, spaces: Path, name: str, **overrides) -> SearchOptions:
    from ..space import load_space

    data = work / "data" / _slug(task.name)
    if not (data / "val.json").is_file():
        write_synth(data, task.synth)
    space = spaces / task.space
    flags = dict(space=space, manifest=data / "train.json", val_manifest=data / "val.json",
                 storage=work / "results", name=name, quiet=True, cache_dir=work / "cache")
    options = resolve_options(load_space(space).defaults, **flags)
    return replace(options, **overrides)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def run_fixed(task: QualityTask, work: Path, spaces: Path, **overrides) -> tuple[Outcome, Outcome]:
    """(c) the guide's defaults and (d) the grid, all trained to max epochs in one Tune run."""
    options = task_options(task, work, spaces, f"{_slug(task.name)}-fixed", **overrides)
    shutil.rmtree(options.experiment_dir, ignore_errors=True)  # left by a killed bench
    folder = train_without_pruning(options, [GUIDE] + task.grid)
    trials, epochs = read_trials(folder), trained_epochs(folder)
    shutil.rmtree(folder, ignore_errors=True)
    is_guide = (trials[list(GUIDE)] == pd.Series(GUIDE)).all(axis=1)
    guide_id = trials.loc[is_guide, "trial_id"].iloc[0]
    guide = Outcome(float(trials.loc[is_guide, "best_val_l1"].iloc[0]),
                    int((epochs["trial_id"] == guide_id).sum()))
    return guide, Outcome(float(trials.loc[~is_guide, "best_val_l1"].min()), len(epochs) - guide.epochs)


def bench_task(task: QualityTask, work: Path, spaces: Path, seeds: int, overrides: dict,
               samplers=("tpe", "random"), fixed: tuple[Outcome, Outcome] | None = None) -> TaskResult:
    guide, grid = fixed or run_fixed(task, work, spaces, **overrides)
    result = TaskResult(task.name, guide, grid, {s: [] for s in samplers})
    for seed in range(seeds):
        for sampler in samplers:
            options = task_options(task, work, spaces, f"{_slug(task.name)}-{sampler}-{seed}", seed=seed,
                                   sampler=sampler, **overrides)
            shutil.rmtree(options.experiment_dir, ignore_errors=True)  # left by a killed bench
            result.searches[sampler].append(outcome(run_search(options).experiment_dir))
            shutil.rmtree(options.experiment_dir, ignore_errors=True)
    return result


def bench_quality(work: Path, spaces: Path, seeds: int = 3, tasks=TASKS, overrides: dict | None = None,
                  on_task=None, **task_kwargs) -> list[TaskResult]:
    """Every task's (a)-(d); `overrides` change the searches' options (to compare defaults)."""
    results = []
    first = task_options(tasks[0], work, spaces, "probe")
    with ray_session(first):
        for task in tasks:
            results.append(bench_task(task, work, spaces, seeds, overrides or {}, **task_kwargs))
            if on_task is not None:
                on_task(results[-1])
    return results


def quality_sections(results: list[TaskResult]) -> list:
    from .report import Row, Section, verdict

    sections = []
    for r in results:
        tpe = r.searches["tpe"]
        to_guide, to_grid = r.ratios("guide"), r.ratios("grid")
        rows = [
            Row("(a) default search, best val_l1", statistics.mean(o.best_val_l1 for o in tpe), "",
                "mean over seeds: " + ", ".join(f"{o.best_val_l1:.4f}" for o in tpe)),
            Row("(b) random search, best val_l1",
                statistics.mean(o.best_val_l1 for o in r.searches["random"]), ""),
            Row("(c) guide's defaults, best val_l1", r.guide.best_val_l1, ""),
            Row("(d) best of the 8-configuration grid", r.grid.best_val_l1, ""),
            Row("(a) / (b)", statistics.mean(r.ratios("random")), "x"),
            Row("(a) / (c)", statistics.mean(to_guide), "x",
                verdict(max(to_guide) <= 0.85, "target <= 0.85 at every seed")),
            Row("(a) / (d)", statistics.mean(to_grid), "x",
                verdict(max(to_grid) <= 1.05, "target <= 1.05 at every seed")),
            Row("epochs (a) / (d)", r.epoch_share(), "x",
                verdict(r.epoch_share() <= 0.5,
                        f"target <= 0.5; (a) {statistics.mean(o.epochs for o in tpe):.0f}, "
                        f"(b) {statistics.mean(o.epochs for o in r.searches['random']):.0f}, "
                        f"(c) {r.guide.epochs}, (d) {r.grid.epochs}")),
            Row("epochs (a) / (d), the baseline's left out", r.epoch_share(baseline=False), "x",
                "the baseline is (c), run inside (a)"),
        ]
        sections.append(Section(r.task, rows))
    to_random = [x for r in results for x in r.ratios("random")]
    sections.append(Section("mean over tasks and seeds", [
        Row("(a) / (b)", statistics.mean(to_random), "x", verdict(statistics.mean(to_random) <= 1, "target <= 1")),
        Row("(a) / (c)", statistics.mean(x for r in results for x in r.ratios("guide")), "x"),
        Row("(a) / (d)", statistics.mean(x for r in results for x in r.ratios("grid")), "x"),
        Row("epochs (a) / (d)", statistics.mean(r.epoch_share() for r in results), "x"),
        Row("epochs (a) / (d), the baseline's left out",
            statistics.mean(r.epoch_share(baseline=False) for r in results), "x"),
    ]))
    return sections
