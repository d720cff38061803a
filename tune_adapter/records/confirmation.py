"""The confirmation of a search's winners: `confirm.parquet`, `confirm_epochs.parquet`, and
what they say (mean +- sd over seeds, the confirmed winner, a paired bootstrap verdict).

`confirm.parquet`: one row per run (one search configuration trained at one seed, all
epochs, no pruning): `run_id` (Tune's id of the run), `trial_id` (the search trial whose
configuration it trains), `seed`, `baseline`, `number`, `status`, the configuration's
parameters, `epochs`, `best_epoch`, `best_val_l1`, `best_val_mse`, `best_val_cos`,
`test_epoch` and `test_l1`, `test_mse`, `test_cos` (with a test manifest: scored once, at the
run's best checkpointed epoch by val_l1), `checkpoint` (that epoch's) with
`checkpoint_epoch` and its `checkpoint_val_l1`, `_mse`, `_cos` (what an export of the run
holds), `wall_seconds`, `error`. `confirm_epochs.parquet`: one row per run per epoch, as epochs.parquet plus
`run_id` and `seed`. Both are written as the search's files are (results.TrialStore).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from .results import (
    METADATA_KEY,
    ExperimentInfo,
    TrialRecord,
    TrialStore,
    _epochs_schema,
    _param_type,
    read_pair,
)

CONFIRM_FILE = "confirm.parquet"
CONFIRM_EPOCHS_FILE = "confirm_epochs.parquet"
CONFIRM_FOLDER = "confirm"  # Tune's experiment folder of the runs, inside the search's
SEED_KEY = "seed"
SOURCE_KEY = "source_trial"  # the run's Tune config key naming the search trial
RUN_KEYS = (SEED_KEY, SOURCE_KEY)
TEST_METRICS = ("test_l1", "test_mse", "test_cos")
CHECKPOINT_METRICS = ("val_l1", "val_mse", "val_cos")


class ConfirmStore(TrialStore):
    """The runs of a confirmation, mirrored to Parquet after every change; a run's record is
    the search's TrialRecord, whose params carry its seed and source trial."""

    files = (CONFIRM_FILE, CONFIRM_EPOCHS_FILE)
    id_key = "run_id"

    def __init__(self, folder: Path, info: ExperimentInfo):
        self.tests: dict[str, dict] = {}  # run_id -> test metrics and the epoch scored
        super().__init__(folder, info)

    @property
    def search_params(self) -> list[str]:
        return [p for p in self.info.params if p not in RUN_KEYS]

    def record_of(self, row: dict) -> TrialRecord:
        params = {**{p: row.get(p) for p in self.search_params},
                  SEED_KEY: row["seed"], SOURCE_KEY: row["trial_id"]}
        if row.get("test_l1") is not None:
            self.tests[row["run_id"]] = {"epoch": row["test_epoch"], **{k: row[k] for k in TEST_METRICS}}
        return TrialRecord(row["run_id"], params, number=row["number"], status=row["status"],
                           wall_seconds=row["wall_seconds"] or 0.0, error=row["error"],
                           baseline=bool(row["baseline"]))

    def record_test(self, run_id: str, epoch: int, metrics: dict) -> None:
        """The run's test metrics (val_* keys of `evaluate_pack` as test_*)."""
        self.tests[run_id] = {"epoch": epoch, **{f"test_{k.removeprefix('val_')}": float(v)
                                                 for k, v in metrics.items() if k.startswith("val_")}}
        self.write()

    def row(self, record: TrialRecord) -> dict:
        full = record.row(self.info.params)
        test = self.tests.get(record.trial_id, {})
        scored = scored_epoch(record)
        at_checkpoint = record.epochs.get(scored, {}) if scored is not None else {}
        return {
            "run_id": record.trial_id, "trial_id": record.params.get(SOURCE_KEY),
            "seed": record.params.get(SEED_KEY), "baseline": record.baseline, "number": record.number,
            "status": record.status, **{p: record.params.get(p) for p in self.search_params},
            **{k: full[k] for k in ("epochs", "best_epoch", "best_val_l1", "best_val_mse", "best_val_cos")},
            "test_epoch": test.get("epoch"), **{k: test.get(k) for k in TEST_METRICS},
            "checkpoint": record.kept_checkpoint(scored), "checkpoint_epoch": scored,
            **{f"checkpoint_{k}": at_checkpoint.get(k) for k in CHECKPOINT_METRICS},
            "wall_seconds": record.wall_seconds, "error": record.error,
        }

    def write(self) -> None:
        rows = [self.row(r) for r in self.trials.values()]
        epoch_rows = [{"run_id": r.trial_id, "trial_id": r.params.get(SOURCE_KEY), "seed": r.params.get(SEED_KEY),
                       **{k: v for k, v in row.items() if k != "trial_id"}}
                      for r in self.trials.values() for row in r.epoch_rows()]
        self.write_pair(rows, self._runs_schema(rows), epoch_rows, _epochs_schema(
            (("run_id", pa.string()), ("trial_id", pa.string()), ("seed", pa.int64()))))

    def _runs_schema(self, rows: list[dict]) -> pa.Schema:
        floats = ["best_val_l1", "best_val_mse", "best_val_cos"]
        return pa.schema(
            [("run_id", pa.string()), ("trial_id", pa.string()), ("seed", pa.int64()),
             ("baseline", pa.bool_()), ("number", pa.int64()), ("status", pa.string())]
            + [(p, _param_type([r[p] for r in rows])) for p in self.search_params]
            + [("epochs", pa.int64()), ("best_epoch", pa.int64())] + [(m, pa.float64()) for m in floats]
            + [("test_epoch", pa.int64())] + [(m, pa.float64()) for m in TEST_METRICS]
            + [("checkpoint", pa.string()), ("checkpoint_epoch", pa.int64())]
            + [(f"checkpoint_{m}", pa.float64()) for m in CHECKPOINT_METRICS]
            + [("wall_seconds", pa.float64()), ("error", pa.string())]
        )


def scored_epoch(record: TrialRecord) -> int | None:
    """The run's best epoch by val_l1 among those whose checkpoint is kept: the one its test
    metrics and export come from (its best epoch, unless --checkpoint-every skipped it)."""
    kept = [(m["val_l1"], e) for e, m in record.epochs.items()
            if m["val_l1"] is not None and not math.isnan(m["val_l1"]) and record.kept_checkpoint(e)]
    return min(kept)[1] if kept else None


def has_confirmation(folder: Path) -> bool:
    return (Path(folder) / CONFIRM_FILE).is_file()


def read_confirm(folder: Path):
    """confirm.parquet (of one write with confirm_epochs.parquet) as a pandas DataFrame."""
    runs, _ = read_pair(Path(folder), trials_file=CONFIRM_FILE, epochs_file=CONFIRM_EPOCHS_FILE)
    return runs.to_pandas()


def read_confirm_epochs(folder: Path):
    _, epochs = read_pair(Path(folder), trials_file=CONFIRM_FILE, epochs_file=CONFIRM_EPOCHS_FILE)
    return epochs.to_pandas()


def read_confirm_info(folder: Path) -> ExperimentInfo:
    runs, _ = read_pair(Path(folder), trials_file=CONFIRM_FILE, epochs_file=CONFIRM_EPOCHS_FILE)
    return ExperimentInfo(**json.loads((runs.schema.metadata or {})[METADATA_KEY]))


# -- what the runs say --------------------------------------------------------------------


def finished_runs(runs):
    """Runs that trained every epoch and reported a val_l1: the ones statistics use."""
    return runs[(runs["status"] == "completed") & runs["best_val_l1"].notna()]


def summarize(runs):
    """One row per configuration, best mean val_l1 first: n, mean, sd, min, max of val_l1
    over its seeds, and of test_l1 where scored."""
    import pandas as pd

    done = finished_runs(runs)
    rows = []
    for trial_id, group in done.groupby("trial_id", sort=False):
        val, test = group["best_val_l1"].astype(float), group["test_l1"].dropna().astype(float)
        rows.append({"trial_id": trial_id, "baseline": bool(group["baseline"].any()), "runs": len(group),
                     "val_mean": val.mean(), "val_sd": _sd(val), "val_min": val.min(), "val_max": val.max(),
                     "test_mean": test.mean() if len(test) else math.nan, "test_sd": _sd(test),
                     "test_runs": len(test)})
    frame = pd.DataFrame(rows, columns=["trial_id", "baseline", "runs", "val_mean", "val_sd", "val_min",
                                        "val_max", "test_mean", "test_sd", "test_runs"])
    return frame.sort_values(["val_mean", "trial_id"], kind="stable").reset_index(drop=True)


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_bootstrap(worse, better, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `worse - better` over paired seeds and its bootstrap interval (resampling
    the seeds with replacement, a fixed RNG seed: the same inputs give the same interval)."""
    worse, better = np.asarray(worse, dtype=float), np.asarray(better, dtype=float)
    if worse.shape != better.shape or worse.ndim != 1 or len(worse) == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty 1-D sequences")
    diffs = worse - better
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diffs.mean()), float(low), float(high)


def paired_values(runs, first: str, second: str) -> tuple[list[float], list[float], list[int]]:
    """val_l1 of two configurations at the seeds both finished, seed by seed."""
    done = finished_runs(runs)
    a = done[done["trial_id"] == first].set_index("seed")["best_val_l1"]
    b = done[done["trial_id"] == second].set_index("seed")["best_val_l1"]
    seeds = sorted(set(a.index) & set(b.index))
    return [float(a[s]) for s in seeds], [float(b[s]) for s in seeds], seeds


def advantage_line(runs, winner: str, other: str, label: str) -> str:
    """How much lower the winner's val_l1 is than `other`'s, paired by seed, with a 95% interval."""
    theirs, ours, seeds = paired_values(runs, other, winner)
    if not seeds:
        return f"over the {label} {other}: no seed that both finished"
    mean, low, high = paired_bootstrap(theirs, ours)
    base = float(np.mean(theirs))
    share = f" ({mean / base:.1%})" if base else ""
    text = (f"over the {label} {other}: val_l1 lower by {mean:.4f}{share}, 95% interval "
            f"[{low:.4f}, {high:.4f}] over {len(seeds)} paired seeds")
    if low <= 0 <= high:
        text += ": not distinguishable from noise"
    return text


def confirmed_winner(runs) -> str | None:
    """The search trial whose configuration has the lowest mean val_l1 over its seeds."""
    summary = summarize(runs)
    return None if summary.empty else str(summary.iloc[0]["trial_id"])


def verdict_lines(runs) -> list[str]:
    summary = summarize(runs)
    if summary.empty:
        return ["no run has finished yet"]
    winner = summary.iloc[0]
    lines = [f"confirmed winner: {winner['trial_id']}" + (" (the baseline)" if winner["baseline"] else "")
             + f", mean val_l1 {winner['val_mean']:.4f} over {winner['runs']} seeds"]
    if len(summary) > 1:
        lines.append(advantage_line(runs, winner["trial_id"], summary.iloc[1]["trial_id"], "runner-up"))
    baseline = summary[summary["baseline"]]
    if not baseline.empty and not winner["baseline"] and baseline.iloc[0]["trial_id"] != summary.iloc[1]["trial_id"]:
        lines.append(advantage_line(runs, winner["trial_id"], baseline.iloc[0]["trial_id"], "baseline"))
    elif not baseline.empty and not winner["baseline"]:
        lines.append("(the runner-up is the baseline)")
    return lines


def winner_run(runs) -> dict | None:
    """The confirmed winner's run whose checkpoint scores the lowest val_l1: what `best
    --export` exports, ranked by the epoch it exports (a run's best epoch may have no
    checkpoint with --checkpoint-every > 1). Files written before checkpoint_val_l1 rank by
    best_val_l1."""
    from ..search.uri_storage import checkpoint_exists

    winner = confirmed_winner(runs)
    done = finished_runs(runs)
    mine = done[(done["trial_id"] == winner) & done["checkpoint"].notna()]
    mine = mine[mine["checkpoint"].map(lambda p: isinstance(p, str) and checkpoint_exists(p))]
    if mine.empty:
        return None
    key = "checkpoint_val_l1" if "checkpoint_val_l1" in mine and mine["checkpoint_val_l1"].notna().all() \
        else "best_val_l1"
    return mine.sort_values([key, "seed"], kind="stable").iloc[0].to_dict()


def confirm_record(runs, trial_id: str) -> dict:
    """The `confirm` section of an export's adapter_config.json."""
    done = finished_runs(runs)
    mine = done[done["trial_id"] == trial_id].sort_values("seed")
    row = summarize(runs).set_index("trial_id").loc[trial_id]
    record = {"seeds": [int(s) for s in mine["seed"]], "val_l1_mean": float(row["val_mean"]),
              "val_l1_sd": _none_if_nan(row["val_sd"]), "val_l1": [float(v) for v in mine["best_val_l1"]]}
    if row["test_runs"]:
        record.update({"test_l1_mean": float(row["test_mean"]), "test_l1_sd": _none_if_nan(row["test_sd"]),
                       "test": {k: [float(v) for v in mine[k]] for k in TEST_METRICS}})
    record["verdict"] = verdict_lines(runs)
    return record


def _none_if_nan(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def confirm_table(runs, title: str = "confirmation"):
    """A rich table of each configuration over its seeds, and the verdict lines under it."""
    from rich.console import Group
    from rich.text import Text

    from .fit_table import Column, FitTable

    summary = summarize(runs)
    tested = bool(summary["test_runs"].sum()) if not summary.empty else False
    rows = summary.to_dict("records")
    # min and max are left out first when the terminal is narrow: mean ± sd says most.
    columns = [Column("#", [str(rank) for rank in range(1, len(rows) + 1)]),
               Column("trial", [r["trial_id"] + (" (baseline)" if r["baseline"] else "") for r in rows]),
               Column("seeds", [str(r["runs"]) for r in rows]),
               Column("val_l1 mean ± sd", [_pm(r["val_mean"], r["val_sd"]) for r in rows]),
               Column("min", [f"{r['val_min']:.4f}" for r in rows], priority=1),
               Column("max", [f"{r['val_max']:.4f}" for r in rows], priority=2)]
    if tested:
        columns.append(Column("test_l1 mean ± sd", [_pm(r["test_mean"], r["test_sd"]) for r in rows]))
    pending = len(runs) - len(finished_runs(runs))
    caption = f"{pending} of {len(runs)} runs not finished (running, pending or failed)" if pending else None
    return Group(FitTable(columns, title=title, caption=caption), Text("\n".join(verdict_lines(runs))))


def _pm(mean: float, sd: float) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if sd is None or math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"
