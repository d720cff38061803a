"""Resumed trials whose checkpoint Tune's experiment snapshot no longer matches.

Tune registers a trial's new checkpoint (deleting the one `num_to_keep` drops) and saves
its experiment snapshot to storage after that, in the same step. A driver killed in
between leaves a snapshot naming a deleted checkpoint: `Tuner.restore` then fails the
trial ("Could not recover from checkpoint as it does not exist on storage anymore") on
every retry, and it ends as `error`. A snapshot may also lag several checkpoints behind.

The Parquet store is written before Tune registers a checkpoint (StoreCallback's
`on_checkpoint`), so it names the trial's newest checkpoint on storage. Before a resumed
trial starts, this registers that checkpoint with the trial, as Tune would have done had
its snapshot been current, or, when none is left, drops the trial's checkpoints so Tune
starts it again from scratch. Tune still does the restoring. Tune's books on a trial's
checkpoints are private: compat.py reads and writes them; tests/search/test_faults.py runs
this on a real Tune `Trial`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from ..records.results import TrialRecord
from .compat import (forget_checkpoints, latest_checkpoint_result, raise_checkpoint_index,
                     tracked_checkpoints, training_result)
from .uri_storage import checkpoint_exists, checkpoint_fs_path

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000003


def exists(checkpoint) -> bool:
    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pafs.FileType.NotFound


def newest_recorded(record: TrialRecord | None) -> tuple[int, str] | None:
    """(epoch, path) of the newest checkpoint the store names that is still on storage."""
    if record is None:
        return None
    kept = [(epoch, path) for epoch, path in record.checkpoints.items() if checkpoint_exists(path)]
    return max(kept) if kept else None


def repair_checkpoint(trial, record: TrialRecord | None) -> str | None:
    """Make a pending resumed trial restore from its newest checkpoint on storage; returns
    what was done ("newer", "scratch") or None when Tune's own choice stands."""
    latest = latest_checkpoint_result(trial)
    tracked = unique(tracked_checkpoints(trial))
    kept = [r for r in tracked if exists(r.checkpoint)]
    newest = newest_recorded(record)
    tune_epoch = latest.metrics.get("epoch") if latest is not None else None
    newer = newest is not None and (tune_epoch is None or newest[0] > tune_epoch)
    if len(kept) == len(tracked) and not newer:
        return None
    # Tune's checkpoint manager fails deleting a checkpoint already gone: start it anew and
    # replay what is left, then the newest, so Tune's num_to_keep applies as before.
    forget_checkpoints(trial)
    newest_path = newest[1] if newest is not None else None
    for result in kept:
        if result.checkpoint.path != newest_path:
            trial.on_checkpoint(result)
    if newest is not None:
        register(trial, record, *newest)
    return "newer" if newest is not None or kept else "scratch"


def skip_stored_checkpoints(trial) -> None:
    """A snapshot's checkpoint index can lag the trial's folders on storage (checkpoints
    persisted after it): the next checkpoint must get a folder of its own, not be
    persisted into one of them and mixed with its files."""
    storage = trial.storage
    if storage.trial_dir_name is None:  # a new trial: no folder yet
        return
    highest = highest_checkpoint_index(storage.storage_filesystem, storage.trial_fs_path)
    if highest is not None:  # Tune persists the next checkpoint at the index after this one
        raise_checkpoint_index(trial, highest)


def unique(results: list) -> list:
    seen, out = set(), []
    for result in results:
        if id(result) not in seen:
            seen.add(id(result))
            out.append(result)
    return out


def register(trial, record: TrialRecord, epoch: int, path: str) -> None:
    from ray.tune import Checkpoint

    metrics = {**record.epochs.get(epoch, {}), "epoch": epoch, "training_iteration": epoch,
               "trial_id": trial.trial_id}
    checkpoint = Checkpoint(checkpoint_fs_path(path), filesystem=trial.storage.storage_filesystem)
    trial.on_checkpoint(training_result(checkpoint, metrics))


def highest_checkpoint_index(fs: pafs.FileSystem, trial_dir: str) -> int | None:
    """The highest checkpoint_N in a trial's folder on storage (a folder, or a URI's)."""
    try:  # seen once in the suite: "Cannot list directory" of a trial folder not there (yet)
        infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    except FileNotFoundError:
        return None
    names = [Path(i.path).name.removeprefix(CHECKPOINT_PREFIX) for i in infos
             if Path(i.path).name.startswith(CHECKPOINT_PREFIX)]
    indices = [int(n) for n in names if n.isdigit()]
    return max(indices) if indices else None
