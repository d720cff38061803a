"""A Tune callback on the driver that mirrors every result into the Parquet store.

It keeps no state worth pickling: Tune pickles callbacks into its experiment snapshot, so
the store is (re)opened in `setup`, from the Parquet files when resuming.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from ray.tune import Callback
from ray.tune.result import SHOULD_CHECKPOINT

from ..records.results import FINAL_STATUSES, TRIALS_FILE, WAITING, ExperimentInfo, TrialStore, read_info
from .budget import SPENT_KEY, SearchClock
from .scheduler import FINALS_OF, is_baseline, is_finalist, record_id
from .recover import repair_checkpoint, skip_stored_checkpoints
from .uri_storage import checkpoint_location, upload_own_files

MIRROR_UPLOAD_EVERY_S = 30.0  # --storage URI: tune-adapter's files uploaded at most this often, and at each trial's end


def error_message(trial) -> str:
    """The last line of the trial's latest traceback: the exception and its message.

    Read from the driver's staging copy first: Tune writes it just before it tells the
    callbacks, and the copy in storage (`get_error`) arrives with the next sync, so a
    trial's first failure is not there yet.
    """
    staged = trial.error_file
    if staged and os.path.isfile(staged):
        text = Path(staged).read_text()
    else:
        error = trial.get_error()
        text = str(error) if error is not None else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed (no error text was saved)"


class StoreCallback(Callback):

    @property
    def tune_folder(self) -> Path:
        """Tune's experiment folder, holding the trials' checkpoint folders."""
        return self.folder

    def __init__(self, folder: Path, info: ExperimentInfo, clock: SearchClock | None = None,
                 finals_rung: int | None = None):
        self.folder, self.info = Path(folder), info
        self.clock, self.finals_rung = clock, finals_rung
        self.store: TrialStore | None = None
        self.started: dict[str, float] = {}
        self.elapsed: dict[str, float] = {}  # wall seconds of earlier attempts and runs
        self.seen: set[str] = set()  # trials whose checkpoint was checked before they start
        self.first_step = True

    def __getstate__(self):
        # A fresh callback's state: the store, clocks and counters are rebuilt in `setup`.
        return dict(type(self)(self.folder, self.info, self.clock, self.finals_rung).__dict__)

    def setup(self, **info):
        if (self.folder / TRIALS_FILE).is_file() and type(self) is StoreCallback:
            # This run's settings, which the driver wrote there (a restored callback's are
            # those of the run that began the experiment), and the time spent so far.
            self.info = read_info(self.folder)
        if self.clock is not None:
            self.clock.budget_s = self.info.extra.get("search", {}).get("time_budget")
            self.clock.restart(self.info.extra.get(SPENT_KEY, 0.0))
        self.store = self.open_store()
        self.elapsed = {t: r.wall_seconds for t, r in self.store.trials.items()}

    def open_store(self) -> TrialStore:
        return TrialStore(self.folder, self.info)

    def params_of(self, trial) -> dict:
        return {p: trial.config.get(p) for p in self.info.params}

    def wall_seconds(self, trial) -> float:
        start = self.started.setdefault(record_id(trial), time.monotonic())
        return self.elapsed.get(record_id(trial), 0.0) + time.monotonic() - start

    def on_step_begin(self, iteration, trials, **info):
        # Trials a resumed search restores are all there before its first step, before
        # any has started: the checkpoint each restores from must still exist (recover.py).
        if self.first_step:
            self.first_step = False
            self.drop_lost_trials(trials)
        for trial in trials:
            if trial.trial_id not in self.seen:
                self.seen.add(trial.trial_id)
                if trial.status == trial.PENDING:
                    repair_checkpoint(trial, self.own_record(trial))
                    skip_stored_checkpoints(trial)
            if trial.status == trial.ERROR and not self.store.is_finished(record_id(trial)):
                # Ended by Tune without a callback (a reused actor whose reset failed).
                self.store.record_end(record_id(trial), self.params_of(trial), "error", error_message(trial),
                                      baseline=is_baseline(trial))

    def own_record(self, trial):
        """The store's record of this Tune trial's own epochs (a finalist's: from the rung on)."""
        record = self.store.trials.get(record_id(trial))
        if record is None or self.finals_rung is None or is_baseline(trial):
            return record
        mine = (lambda e: e > self.finals_rung) if is_finalist(trial) else (lambda e: e <= self.finals_rung)
        return replace(record, checkpoints={e: p for e, p in record.checkpoints.items() if mine(e)})

    def drop_lost_trials(self, trials) -> None:
        """Trials of the store that a resumed Tune does not know: they started after its
        last snapshot, so they never resume, and Tune's searcher (restored from the same
        snapshot) runs a new trial in the place of each, finished or not. Their records and
        checkpoint folders go, so the search holds its number of trials, each once."""
        known = {record_id(t) for t in trials}
        run_start = self.info.extra.get("run_starts", [0])[-1]  # earlier runs' trials stay
        lost = {t for t, r in self.store.trials.items() if t not in known and r.number >= run_start}
        for trial_id in lost:
            for path in self.store.trials[trial_id].checkpoints.values():
                if Path(path).parent.parent == self.tune_folder:  # trial_ID/checkpoint_N of this experiment
                    shutil.rmtree(Path(path).parent, ignore_errors=True)
        if lost:
            self.store.drop(lost)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[record_id(trial)] = time.monotonic()
        record = self.store.trials.get(record_id(trial))
        if is_finalist(trial) and record is not None and record.status == WAITING:
            record.status = "running"  # a finalist: its screened trial trains on
            self.store.write()

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A failed attempt that Tune retries: its time counts, and the retry starts anew.
        self.end_attempt(record_id(trial))

    def end_attempt(self, trial_id: str) -> None:
        start = self.started.pop(trial_id, None)
        if start is not None:
            self.elapsed[trial_id] = self.elapsed.get(trial_id, 0.0) + time.monotonic() - start

    def note_time(self) -> None:
        """The search's time spent, saved with every write of the files (budget.py)."""
        if self.clock is not None:
            self.info.extra[SPENT_KEY] = self.clock.spent()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.note_time()
        # A result that carries a checkpoint is written once, with it (`on_checkpoint`): the
        # trial waits for the driver after each report, so every write is time it waits.
        self.store.record_epoch(record_id(trial), self.params_of(trial), result, self.wall_seconds(trial),
                                write=not result.get(SHOULD_CHECKPOINT, False), baseline=is_baseline(trial))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Tune calls this right after on_trial_result for the same report.
        self.note_time()
        epoch = (trial.last_result or {}).get("epoch")
        if epoch is not None:
            self.store.record_checkpoint(record_id(trial), int(epoch),
                                         checkpoint_location(checkpoint.path, checkpoint.filesystem))
        else:
            self.store.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.note_time()
        self.store.record_end(record_id(trial), self.params_of(trial), self.end_status(trial),
                              wall_seconds=self.wall_seconds(trial), baseline=is_baseline(trial))

    def end_status(self, trial) -> str:
        epochs = (trial.last_result or {}).get("epoch", 0)
        if epochs >= self.info.max_epochs:
            return "completed"
        if self.clock is not None and trial.trial_id in self.clock.stopped:
            return "stopped"
        screened = self.finals_rung is not None and epochs >= self.finals_rung
        return WAITING if screened and not is_finalist(trial) and not is_baseline(trial) else "pruned"

    def on_trial_error(self, iteration, trials, trial, **info):
        self.note_time()
        self.store.record_end(record_id(trial), self.params_of(trial), "error", error_message(trial),
                              wall_seconds=self.wall_seconds(trial), baseline=is_baseline(trial))

    def on_experiment_end(self, trials, **info):
        spent = self.clock is not None and self.clock.is_spent()
        if run_over(self.store, spent, {record_id(t) for t in trials}):
            end_waiting(self.store, spent)  # before the live table's last frame


def run_over(store: TrialStore, budget_spent: bool, known: set[str]) -> bool:
    """Whether this run of the search is over: every trial Tune knows ended or screened, all
    its trials handed out (unless the budget ended it first), and the finals done: the
    finalists trained to the end, or no screened trial is left to continue."""
    start = store.info.extra.get("run_starts", [0])[-1]
    mine = [r for r in store.trials.values() if r.number >= start]
    if any(r.status not in FINAL_STATUSES and r.status != WAITING for r in mine if r.trial_id in known):
        return False
    if len(mine) < store.info.num_samples - start and not budget_spent:
        return False
    finalists = sum(r.status == "completed" and not r.baseline for r in mine)
    waiting = sum(r.status == WAITING for r in mine)
    return budget_spent or waiting == 0 or finalists >= store.info.extra.get("search", {}).get("finalists", 0)


def end_waiting(store: TrialStore, budget_spent: bool) -> None:
    """Screened trials no finalist continued: pruned (stopped, when the budget ended the run)."""
    for record in list(store.trials.values()):
        if record.status == WAITING:
            store.record_end(record.trial_id, record.params, "stopped" if budget_spent else "pruned")


def result_id(result) -> str:
    """The record of a Tune Result (of fit()): its trial's folder is trial_ID (tuner.py)."""
    return (result.config or {}).get(FINALS_OF) or Path(result.path).name.removeprefix("trial_")


def record_silent_errors(store: TrialStore, results: list) -> None:
    """Trials Tune ended in error without telling its callbacks (a reused actor that
    failed to reset): recorded as `error` with Tune's message, so none stays 'running'."""
    for result in results:
        trial_id = result_id(result)
        if result.error is not None and not store.is_finished(trial_id):
            lines = str(result.error).strip().splitlines() or ["the trial failed"]
            store.record_end(trial_id, {p: (result.config or {}).get(p) for p in store.info.params}, "error", lines[-1],
                             baseline=is_baseline(result))


class MirrorUpload(Callback):
    """Uploads the mirror's own files as the search goes (the store writes them first), each
    only when it changed since its last upload: TensorBoard's files grow, most stand still."""

    def __init__(self, mirror: Path, uri: str, every_s: float = MIRROR_UPLOAD_EVERY_S):
        self.mirror, self.uri, self.every_s = mirror, uri, every_s
        self.last = 0.0
        self.sent: dict[str, tuple[int, int]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self.last >= self.every_s:
            self.upload()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.upload()

    def upload(self) -> None:
        upload_own_files(self.mirror, self.uri, self.sent)
        self.last = time.monotonic()
