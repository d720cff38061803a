"""Does the pack's format change the answer? `tune-adapter bench --pack-quality`.

On `bench --quality`'s tasks, the same trainings under three data settings: float32 packs
shuffled whole (as before pack format 2), half precision shuffled whole, and half
precision read a window of shards at a time (the tasks' small datasets cut into about 16
shards, 4 to a window). Compared: (c) the guide's defaults and (d) the best of the grid,
each trained to max epochs (deterministic: only the data setting differs), and the default
search's best per seed (which also moves with timing: which trials reach a rung first).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..search.driver import ray_session
from .quality import TASKS, bench_task, run_fixed, task_options

PACK_SETTINGS = {
    "float32, whole": {"pack_dtype": "float32", "shuffle_window": 0},
    "half, whole": {"shuffle_window": 0},
    "half, windows": {"shard_mb": 0.05, "shuffle_window": 4},
}
HALF_TARGET, WINDOW_TARGET = 1.01, 1.02


@dataclass
class SettingResult:
    guide: float
    grid: float
    searches: list[float] = field(default_factory=list)


@dataclass
class PackQuality:
    task: str
    settings: dict[str, SettingResult] = field(default_factory=dict)

    def ratio(self, setting: str, against: str, key: str) -> float:
        value = lambda s: statistics.mean(getattr(self.settings[s], key)) if key == "searches" \
            else getattr(self.settings[s], key)  # noqa: E731
        return value(setting) / value(against)


def bench_pack_quality(work: Path, spaces: Path, seeds: int = 1, tasks=TASKS) -> list[PackQuality]:
    results = []
    with ray_session(task_options(tasks[0], work, spaces, "probe")):
        for task in tasks:
            result = PackQuality(task.name)
            for name, overrides in PACK_SETTINGS.items():
                fixed = run_fixed(task, work, spaces, **overrides)
                searched = bench_task(task, work, spaces, seeds, overrides, samplers=("tpe",), fixed=fixed)
                result.settings[name] = SettingResult(fixed[0].best_val_l1, fixed[1].best_val_l1,
                                                      [o.best_val_l1 for o in searched.searches["tpe"]])
            results.append(result)
    return results


def pack_quality_sections(results: list[PackQuality]) -> list:
    from .report import Row, Section, verdict

    sections = []
    for r in results:
        rows = [Row(f"{name}: (c) guide, (d) grid, (a) search", s.grid, "",
                    f"(c) {s.guide:.4f}, (d) {s.grid:.4f}, (a) " + ", ".join(f"{v:.4f}" for v in s.searches))
                for name, s in r.settings.items()]
        for setting, against, target in (("half, whole", "float32, whole", HALF_TARGET),
                                         ("half, windows", "half, whole", WINDOW_TARGET)):
            for key, label in (("guide", "(c)"), ("grid", "(d)"), ("searches", "(a)")):
                ratio = r.ratio(setting, against, key)
                timing = "; the search's trials also depend on timing" if key == "searches" else ""
                rows.append(Row(f"{label} {setting} / {against}", ratio, "x",
                                verdict(ratio <= target, f"target <= {target}") + timing))
        sections.append(Section(r.task, rows))
    return sections
