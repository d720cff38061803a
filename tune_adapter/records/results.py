"""The Parquet trial store: `trials.parquet` and `epochs.parquet` of one experiment.

`trials.parquet`: one row per trial: `trial_id`, `number` (0, 1, ... in the order trials
started), `status` (running|waiting|completed|pruned|stopped|error; waiting: screened at the finals
rung, until the finalists are chosen; stopped: by --time-budget), `baseline` (the search's baseline
trial: the space's BASELINE values, trained all epochs),
every sampled parameter as its own column (named as the space names it), `epochs`,
`best_epoch`, `best_val_l1`, `best_val_mse`, `best_val_cos`, `last_train_loss`,
`last_val_l1`, `last_val_mse`, `last_val_cos`, `wall_seconds`, `best_checkpoint`, `error`.
`epochs.parquet`: one row per trial per epoch: `trial_id`, `epoch`, `train_loss`,
`val_l1`, `val_mse`, `val_cos`, `epoch_seconds`, `step`, `checkpoint`.
Both carry the experiment's description as schema metadata (key `tune_adapter`), and the
count of the write that made them (key `tune_adapter_generation`): `read_pair` reads the
two files of one write.

Both files are rewritten whole (write, then rename) whenever a result arrives: a reader
never sees half a file and a crash loses nothing that was already reported.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_write
from ..errors import UserError
from ..search.uri_storage import checkpoint_exists, is_remote

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
METADATA_KEY = b"tune_adapter"
# Both files of one write carry the same count, so a reader can tell a pair that belongs
# together from one read across the driver's rewrite of both (trials first, then epochs).
GENERATION_KEY = b"tune_adapter_generation"
EPOCH_METRICS = ("train_loss", "val_l1", "val_mse", "val_cos", "epoch_seconds", "step")
# Epoch 0, the starting point, travels to the store inside epoch 1's result as start_*.
START_PREFIX = "start_"
START_METRICS = ("val_l1", "val_mse", "val_cos", "epoch_seconds")
FINAL_STATUSES = ("completed", "pruned", "stopped", "error")
WAITING = "waiting"  # screened at the finals rung, until the finalists are chosen (search/finals.py)


@dataclass
class ExperimentInfo:
    """What a reader needs to interpret the files."""

    name: str
    params: list[str]  # sampled parameter names: the param columns of trials.parquet
    metric: str = "val_l1"
    mode: str = "min"
    max_epochs: int = 0
    num_samples: int = 0
    space: str = ""
    # Each parameter's Optuna distribution (optuna.distributions.distribution_to_json), so a
    # study can be rebuilt from trials.parquet (e.g. for optuna.importance).
    distributions: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class TrialRecord:
    trial_id: str
    params: dict
    number: int = 0
    status: str = "running"
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> metrics (deduplicated)
    checkpoints: dict[int, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    error: str | None = None
    baseline: bool = False

    def trained(self) -> dict[int, dict]:
        """The epochs that trained: all but epoch 0, the starting point."""
        return {e: m for e, m in self.epochs.items() if e >= 1}

    def best_epoch(self) -> int | None:
        ranked = [(m["val_l1"], e) for e, m in self.trained().items() if not math.isnan(m["val_l1"])]
        return min(ranked)[1] if ranked else None

    def row(self, params: list[str]) -> dict:
        best = self.best_epoch()
        trained = self.trained()
        last = trained[max(trained)] if trained else {}
        best_metrics = self.epochs.get(best, {})
        return {
            "trial_id": self.trial_id,
            "number": self.number,
            "status": self.status,
            "baseline": self.baseline,
            **{p: self.params.get(p) for p in params},
            "epochs": len(trained),
            "best_epoch": best,
            "start_val_l1": self.epochs.get(0, {}).get("val_l1"),
            **{f"best_{k}": best_metrics.get(k) for k in ("val_l1", "val_mse", "val_cos")},
            **{f"last_{k}": last.get(k) for k in ("train_loss", "val_l1", "val_mse", "val_cos")},
            "wall_seconds": self.wall_seconds,
            "best_checkpoint": self.kept_checkpoint(best),
            "error": self.error,
        }

    def kept_checkpoint(self, epoch: int | None) -> str | None:
        """The epoch's checkpoint, if Tune still keeps it (it keeps the best and the latest):
        looked at in a folder; on object storage (a URI), not asked at every write, but
        taken from that rule."""
        path = self.checkpoints.get(epoch)
        if not path:
            return None
        if is_remote(path):
            return path if epoch in self.kept_by_tune() else None
        return path if os.path.isdir(path) else None

    def kept_by_tune(self) -> set[int]:
        """Epochs whose checkpoint Tune keeps with num_to_keep=1: the best by val_l1, the latest."""
        scored = [e for e in self.checkpoints if self.epochs.get(e, {}).get("val_l1") is not None]
        best = {min(scored, key=lambda e: self.epochs[e]["val_l1"])} if scored else set()
        return best | ({max(self.checkpoints)} if self.checkpoints else set())

    def epoch_rows(self) -> list[dict]:
        return [{"trial_id": self.trial_id, "epoch": e,
                 **{k: m.get(k) for k in EPOCH_METRICS}, "checkpoint": self.kept_checkpoint(e)}
                for e, m in sorted(self.epochs.items())]


class TrialStore:
    """The experiment's records in memory, mirrored to Parquet after every change."""

    files = (TRIALS_FILE, EPOCHS_FILE)
    id_key = "trial_id"  # the column naming a record in both files

    def __init__(self, folder: Path, info: ExperimentInfo):
        self.folder = Path(folder)
        self.info = info
        self.trials: dict[str, TrialRecord] = {}
        self.generation = 0
        if (self.folder / self.files[0]).is_file():
            self._load()

    def _load(self) -> None:
        trials_table, epochs_table = read_pair(self.folder, trials_file=self.files[0], epochs_file=self.files[1])
        self.generation = generation_of(trials_table) or 0
        for row in trials_table.to_pylist():
            self.trials[row[self.id_key]] = self.record_of(row)
        for row in epochs_table.to_pylist():
            record = self.trials.get(row[self.id_key])
            if record is None:  # a pair from a crash between the two renames: trials is older
                continue
            record.epochs[row["epoch"]] = {k: row[k] for k in EPOCH_METRICS}
            if row["checkpoint"]:
                record.checkpoints[row["epoch"]] = row["checkpoint"]

    def record_of(self, row: dict) -> TrialRecord:
        """A trials.parquet row back as its record."""
        return TrialRecord(
            trial_id=row["trial_id"], params={p: row.get(p) for p in self.info.params},
            number=row["number"],
            status=row["status"], wall_seconds=row["wall_seconds"] or 0.0, error=row["error"],
            baseline=bool(row.get("baseline", False)),
        )

    def _record(self, trial_id: str, params: dict, baseline: bool = False) -> TrialRecord:
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialRecord(trial_id, dict(params), number=len(self.trials),
                                                baseline=baseline)
        return self.trials[trial_id]

    def drop(self, trial_ids: set[str]) -> None:
        """Forget trials (ones a resumed Tune never knew); the others' numbers close up."""
        for trial_id in trial_ids:
            self.trials.pop(trial_id, None)
        for number, record in enumerate(sorted(self.trials.values(), key=lambda r: r.number)):
            record.number = number
        self.write()

    def is_finished(self, trial_id: str) -> bool:
        record = self.trials.get(trial_id)
        return record is not None and record.status in FINAL_STATUSES

    def record_epoch(self, trial_id: str, params: dict, metrics: dict, wall_seconds: float,
                     write: bool = True, baseline: bool = False) -> None:
        """`write=False`: the caller writes with the next record (its checkpoint's)."""
        record = self._record(trial_id, params, baseline)
        if record.status in FINAL_STATUSES:
            return  # a finished trial rerun after a crash: its record stands as it was
        epoch = int(metrics["epoch"])
        if record.status == WAITING and epoch > max(record.epochs, default=0):
            record.status = "running"  # a finalist: it trains on
        record.epochs[epoch] = {k: _number(metrics.get(k), int if k == "step" else float)
                                for k in EPOCH_METRICS}
        if START_PREFIX + "val_l1" in metrics and 0 not in record.epochs:
            record.epochs[0] = {"train_loss": math.nan, "step": 0,
                                **{k: _number(metrics.get(START_PREFIX + k), float) for k in START_METRICS}}
        record.wall_seconds = wall_seconds
        if write:
            self.write()

    def record_checkpoint(self, trial_id: str, epoch: int, path: str) -> None:
        record = self.trials.get(trial_id)
        if record is None or record.status in FINAL_STATUSES:
            return
        record.checkpoints[epoch] = path
        self.write()

    def record_end(self, trial_id: str, params: dict, status: str, error: str | None = None,
                   wall_seconds: float | None = None, baseline: bool = False) -> None:
        record = self._record(trial_id, params, baseline)
        if record.status in FINAL_STATUSES:
            return
        record.status, record.error = status, error
        if wall_seconds is not None:
            record.wall_seconds = wall_seconds
        self.write()

    def write(self) -> None:
        trial_rows = [r.row(self.info.params) for r in self.trials.values()]
        epoch_rows = [row for r in self.trials.values() for row in r.epoch_rows()]
        self.write_pair(trial_rows, _trials_schema(self.info.params, trial_rows), epoch_rows, _epochs_schema())

    def write_pair(self, rows: list[dict], schema: pa.Schema, epoch_rows: list[dict],
                   epochs_schema: pa.Schema) -> None:
        """Both files, atomically each, with the same generation in their metadata."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        metadata = {METADATA_KEY: json.dumps(asdict(self.info)).encode(),
                    GENERATION_KEY: str(self.generation).encode()}
        for name, table in zip(self.files, (_table(rows, schema, metadata),
                                            _table(epoch_rows, epochs_schema, metadata))):
            atomic_write(self.folder / name, lambda staging, t=table: pq.write_table(t, staging))


def _number(value, kind):
    return None if value is None else kind(value)


def _trials_schema(params: list[str], rows: list[dict]) -> pa.Schema:
    metrics = ["best_val_l1", "best_val_mse", "best_val_cos", "last_train_loss", "last_val_l1",
               "last_val_mse", "last_val_cos", "wall_seconds"]
    return pa.schema(
        [("trial_id", pa.string()), ("number", pa.int64()), ("status", pa.string()),
         ("baseline", pa.bool_())]
        + [(p, _param_type([r[p] for r in rows])) for p in params]
        + [("epochs", pa.int64()), ("best_epoch", pa.int64()), ("start_val_l1", pa.float64())]
        + [(m, pa.float64()) for m in metrics]
        + [("best_checkpoint", pa.string()), ("error", pa.string())]
    )


def _param_type(values: list) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string() if present else pa.float64()


def _epochs_schema(keys=(("trial_id", pa.string()),)) -> pa.Schema:
    """epochs.parquet's columns after `keys`, the columns that name the epoch's record."""
    return pa.schema([*keys, ("epoch", pa.int64())]
                     + [(k, pa.int64() if k == "step" else pa.float64()) for k in EPOCH_METRICS]
                     + [("checkpoint", pa.string())])


def _table(rows: list[dict], schema: pa.Schema, metadata: dict) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(metadata)


def read_table(path: Path) -> pa.Table:
    """One open file handle: a search may replace the file while it is read, and a reader
    that opens the path twice (once for the footer, once for the data) could mix two files."""
    with open(path, "rb") as f:
        return pq.read_table(f)


def generation_of(table: pa.Table) -> int | None:
    value = (table.schema.metadata or {}).get(GENERATION_KEY)
    return int(value) if value is not None else None


def read_pair(folder: Path, tries: int = 20, pause_s: float = 0.05, trials_file: str = TRIALS_FILE,
              epochs_file: str = EPOCHS_FILE) -> tuple[pa.Table, pa.Table]:
    """trials.parquet and epochs.parquet of the same write.

    The driver rewrites both after every result: read one after the other, they can come
    from two writes (epoch rows of a trial the trials file does not name yet). Read again
    until their generations agree; a pair that never does is what a crash between the two
    renames leaves, and is returned as it is."""
    folder = Path(folder)
    for _ in range(tries):
        trials = read_table(folder / trials_file)
        epochs = read_table(folder / epochs_file) if (folder / epochs_file).is_file() else \
            _table([], _epochs_schema(), {})  # a crash right after the very first rename
        if generation_of(trials) == generation_of(epochs):
            break
        time.sleep(pause_s)
    return trials, epochs


def read_info(folder: Path) -> ExperimentInfo:
    meta = read_table(Path(folder) / TRIALS_FILE).schema.metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{folder / TRIALS_FILE} was not written by tune-adapter")
    return ExperimentInfo(**json.loads(meta[METADATA_KEY]))


def read_trials(folder: Path):
    """trials.parquet as a pandas DataFrame (a search from before baselines: all False; from
    before epoch 0 was measured: start_val_l1 NaN)."""
    trials = read_table(Path(folder) / TRIALS_FILE).to_pandas()
    if "baseline" not in trials:
        trials.insert(3, "baseline", False)
    if "start_val_l1" not in trials:
        trials.insert(list(trials.columns).index("best_epoch") + 1, "start_val_l1", math.nan)
    return trials


def read_epochs(folder: Path):
    """epochs.parquet as a pandas DataFrame."""
    return read_table(Path(folder) / EPOCHS_FILE).to_pandas()


def latest_experiment(storage: Path = Path("results")) -> Path:
    """The most recently written experiment folder under `storage`."""
    found = sorted(Path(storage).glob(f"*/{TRIALS_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no experiment under {storage}/ (no */{TRIALS_FILE}): run tune-adapter search "
                        "first, or give --experiment DIR")
    return found[-1].parent


def open_experiment(folder: str | Path | None, storage: Path = Path("results")) -> tuple[Path, ExperimentInfo]:
    """An experiment folder (the latest when None; a URI's experiment fetched into its local
    mirror) and its description."""
    from ..search.uri_storage import local_path, open_remote_experiment

    if folder is None:
        folder = latest_experiment(storage)
    folder = open_remote_experiment(str(folder)) if is_remote(folder) else local_path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder of a search (results/NAME)")
    for name in (TRIALS_FILE, EPOCHS_FILE):
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name}: give the folder `tune-adapter search` "
                            "wrote (results/NAME)")
    try:
        return folder, read_info(folder)
    except (ValueError, OSError) as exc:
        raise UserError(f"{folder / TRIALS_FILE} cannot be read: {exc}") from None


def best_trial(trials, epochs, folder: Path) -> dict:

    """The trial row whose best checkpointed epoch has the lowest `val_l1`, plus that
    epoch's `export_epoch`, `export_checkpoint` and `export_val_l1`/`_mse`/`_cos`.

    With --checkpoint-every N > 1 a trial's best epoch may have no checkpoint: its best
    epoch that has one competes instead (Tune keeps each trial's best checkpoint by val_l1).
    """

    saved = epochs[epochs["checkpoint"].notna() & epochs["val_l1"].notna()]
    saved = saved[saved["checkpoint"].map(checkpoint_exists)]  # Tune may have deleted it since
    if saved.empty:
        raise UserError(f"no trial in {folder} has a checkpoint yet: wait for the search to report")
    best = saved.sort_values(["val_l1", "epoch"], kind="stable").iloc[0]
    row = trials[trials["trial_id"] == best["trial_id"]].iloc[0].to_dict()
    return {**row, "export_epoch": int(best["epoch"]), "export_checkpoint": best["checkpoint"],
            **{f"export_{k}": float(best[k]) for k in ("val_l1", "val_mse", "val_cos")}}


def baseline_verdict(trials_frame) -> str | None:
    """One line: how much lower the winner's best val_l1 is than the baseline's, or that the
    search did not beat it. None when the search ran without a baseline."""
    if "baseline" not in trials_frame or not trials_frame["baseline"].any():
        return None
    base = trials_frame[trials_frame["baseline"]].iloc[0]
    ranked = trials_frame.dropna(subset=["best_val_l1"]).sort_values("best_val_l1")
    if base["best_val_l1"] is None or is_nan(base["best_val_l1"]):
        return f"baseline {base['trial_id']} has no val_l1 yet"
    winner = ranked.iloc[0]
    # A search stopped part way (Ctrl-C) is judged as far as it went, and says so.
    unfinished = int((~trials_frame["status"].isin(FINAL_STATUSES)).sum())
    so_far = f" so far ({unfinished} trial{'s' if unfinished > 1 else ''} unfinished)" if unfinished else ""
    if winner["trial_id"] == base["trial_id"] or winner["best_val_l1"] >= base["best_val_l1"]:
        verb = "has not beaten" if unfinished else "did not beat"
        return (f"the search {verb} its baseline{so_far}: {base['trial_id']} (the space's BASELINE) "
                f"has the best val_l1, {base['best_val_l1']:.4f}")
    gain = 1 - winner["best_val_l1"] / base["best_val_l1"]
    return (f"best {winner['trial_id']} val_l1 {winner['best_val_l1']:.4f} against baseline "
            f"{base['trial_id']} {base['best_val_l1']:.4f}: {gain:.1%} lower{so_far}")


def start_gain(row) -> float | None:
    """How much lower a trial's best val_l1 is than its start's (epoch 0), as a fraction;
    None for a search from before epoch 0 was measured."""
    start = row.get("start_val_l1")
    if start is None or is_nan(start) or not start or is_nan(row.get("best_val_l1")):
        return None
    return 1 - row["best_val_l1"] / start


def start_line(row) -> str | None:
    """One line: the trial's best val_l1 against its starting point's."""
    gain = start_gain(row)
    if gain is None:
        return None
    return (f"{row['trial_id']} started at val_l1 {row['start_val_l1']:.4f} (epoch 0): its best is "
            f"{abs(gain):.1%} {'lower' if gain >= 0 else 'higher'}")


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
