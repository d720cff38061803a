"""One Ray Tune trial: a thin layer that runs the plain trainer and forwards its reports."""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune

from ..config import TrainConfig
from ..data import TrainData, open_pack
from ..results import TrialStore
from ..trainer import train


SHM = "/dev/shm"
SHM_NEEDED = 4 << 30


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares; sampled parameters arrive in Tune's `config` dict."""

    base: TrainConfig  # epochs = the search's max epochs
    train_pack: str  # pack folders: each trial maps the same files, no copy of the data
    val_pack: str
    params: tuple[str, ...]  # keys of `config` that are training options
    threads: int
    experiment_dir: str


def trial_config(setup: TrialSetup, config: dict) -> TrainConfig:
    return setup.base.with_values(**{k: config[k] for k in setup.params if k in config})


@contextmanager
def resume_folder(checkpoint: tune.Checkpoint | None):
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def report_to_tune(metrics: dict, checkpoint: Path | None) -> None:
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)
    if checkpoint is not None:
        # Tune has copied it into the trial's storage folder: the scratch copy is spent.
        shutil.rmtree(checkpoint, ignore_errors=True)


def scratch_root() -> str | None:
    """Where a trial writes its checkpoints before Tune copies them to storage: memory
    (/dev/shm) when it has room for a few InfiniteTalk-sized checkpoints (about 0.9 GB
    each), so each checkpoint costs one disk write (Tune's copy) instead of two."""
    try:
        usage = shutil.disk_usage(SHM)
    except OSError:
        return None
    return SHM if usage.free > SHM_NEEDED else None


def already_finished(setup: TrialSetup) -> bool:
    """True for a trial the store holds as finished (Ray can rerun one after a crash)."""
    folder = Path(setup.experiment_dir)
    if not (folder / "trials.parquet").is_file():
        return False
    from ..results import read_info

    store = TrialStore(folder, read_info(folder))
    return store.is_finished(tune.get_context().get_trial_id())


def run_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable. Actors are reused, so it sets all its state itself."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    torch.set_num_threads(setup.threads)
    if already_finished(setup):
        return
    data = TrainData(open_pack(Path(setup.train_pack)), open_pack(Path(setup.val_pack)))
    try:
        with tempfile.TemporaryDirectory(prefix="tune-adapter-trial-", dir=scratch_root()) as scratch, \
                resume_folder(tune.get_checkpoint()) as resume_from:
            train(trial_config(setup, config), data, report=report_to_tune,
                  output_dir=Path(scratch), resume_from=resume_from)
    finally:
        # The actor is reused for the next trial: free this trial's model and optimizer
        # (some held in reference cycles) before that one allocates its own.
        del data
        gc.collect()
