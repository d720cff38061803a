"""Is the search's winner the confirmed one? `tune-adapter bench --confirm`.

On the quality benchmark's tasks (bench/quality.py), each with search seeds 0..N-1: the
default search, then `confirm --top 3 --seeds 3` of it. Reported per task: how often the
search's single-run winner is also the confirmed winner (lowest mean val_l1 over seeds),
and the optimism confirmation removes: the confirmed mean val_l1 of the search's winner
over the best val_l1 the search reported for it.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..records.confirmation import confirmed_winner, read_confirm, summarize
from ..records.results import read_trials
from ..search.confirm import ConfirmOptions, run_confirm
from ..search.driver import ray_session, run_search
from .quality import TASKS, _slug, task_options
from .report import Row, Section

TOP, SEEDS = 3, 3


@dataclass
class ConfirmOutcome:
    same_winner: bool
    optimism: float  # the search winner's confirmed mean val_l1 / its search val_l1


@dataclass
class ConfirmTaskResult:
    task: str
    outcomes: list[ConfirmOutcome] = field(default_factory=list)


def confirm_search(folder: Path) -> ConfirmOutcome:
    trials = read_trials(folder)
    winner = trials.sort_values(["best_val_l1", "number"], kind="stable").iloc[0]
    run_confirm(ConfirmOptions(experiment=folder, top=TOP, seeds=SEEDS, quiet=True))
    runs = read_confirm(folder)
    summary = summarize(runs).set_index("trial_id")
    mean = float(summary.loc[winner["trial_id"], "val_mean"])
    return ConfirmOutcome(confirmed_winner(runs) == winner["trial_id"], mean / float(winner["best_val_l1"]))


def bench_confirm(work: Path, spaces: Path, seeds: int = 2, tasks=TASKS, overrides: dict | None = None,
                  on_task=None) -> list[ConfirmTaskResult]:
    """Each task's searches and their confirmations; `overrides` change the searches' options."""
    results = []
    with ray_session(task_options(tasks[0], work, spaces, "probe")):
        for task in tasks:
            result = ConfirmTaskResult(task.name)
            for seed in range(seeds):
                options = task_options(task, work, spaces, f"{_slug(task.name)}-confirm-{seed}", seed=seed,
                                       **(overrides or {}))
                shutil.rmtree(options.experiment_dir, ignore_errors=True)  # left by a killed bench
                result.outcomes.append(confirm_search(run_search(options).experiment_dir))
                shutil.rmtree(options.experiment_dir, ignore_errors=True)
            results.append(result)
            if on_task is not None:
                on_task(result)
    return results


def confirm_sections(results: list[ConfirmTaskResult]) -> list[Section]:
    sections = []
    for r in results:
        same = sum(o.same_winner for o in r.outcomes)
        sections.append(Section(r.task, [
            Row("search winner confirmed", same, f"of {len(r.outcomes)}"),
            Row("winner's confirmed mean / its search val_l1", statistics.mean(o.optimism for o in r.outcomes),
                "x", ", ".join(f"{o.optimism:.3f}" for o in r.outcomes)),
        ]))
    everything = [o for r in results for o in r.outcomes]
    sections.append(Section("all tasks and seeds", [
        Row("search winner confirmed", sum(o.same_winner for o in everything), f"of {len(everything)}"),
        Row("winner's confirmed mean / its search val_l1", statistics.mean(o.optimism for o in everything), "x"),
    ]))
    return sections
