"""One Ray Tune trial: a thin layer that runs the plain trainer and forwards its reports."""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune

from ..config import TrainConfig
from ..records.results import START_METRICS, START_PREFIX
from ..data import TrainData, load_pack_dir, open_pack
from ..data.staging import stage_pack
from ..records.results import WAITING, TrialStore
from ..trainer import train
from .scheduler import BASELINE_KEY, FINALS_OF
from .storage import linking_filesystem
from .uri_storage import SCRATCH_FOLDER


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares; sampled parameters arrive in Tune's `config` dict."""

    base: TrainConfig  # epochs = the search's max epochs
    train_pack: str  # pack folders: each trial maps the same files, no copy of the data
    val_pack: str
    data_uri: str | None  # --data URI: each node's trials map that node's staged copy instead
    params: tuple[str, ...]  # keys of `config` that are training options
    threads: int
    experiment_dir: str
    finals_rung: int | None = None  # screening trials end here (scheduler.py); finalists go on


def trial_config(setup: TrialSetup, config: dict, gpus: float = 0.0) -> TrainConfig:
    """The trial's training options, on an explicit device: a trial without a GPU share
    trains on the CPU even where Ray lets its worker see GPUs (on "auto" every such trial
    would take GPU 0). A screening trial trains to the finals rung and keeps its optimizer
    moments there, for the finalist that continues it."""
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    values = {k: config[k] for k in setup.params if k in config}
    if setup.finals_rung is not None and not config.get(BASELINE_KEY) and not config.get(FINALS_OF):
        values.update(epochs=setup.finals_rung, moments_in_last_checkpoint=True)
    return setup.base.with_values(**values, device=device)


def trial_threads(setup: TrialSetup) -> int:
    """Torch threads: the CPUs Tune gave this trial (a finalist may have more: tuner.py)."""
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", setup.threads)
    return max(1, int(cpus))


def trial_gpus() -> float:
    """The GPU share Tune gave this trial (0.5: half of the one GPU its worker sees)."""
    return float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0))


class GpuOutOfMemory(RuntimeError):
    """A trial that does not fit its GPU share: Tune records it as an error, with this text."""


def cap_gpu_memory(device: torch.device, gpus: float) -> None:
    """Hold the trial's process to its share of the GPU, so that trials sharing one GPU
    cannot run each other out of memory: one past its share fails alone."""
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(gpus)), device)


def release_memory(device: torch.device) -> None:
    """Free what the ended trial made (some of it held in reference cycles) and, on a GPU,
    hand the allocator's cached blocks back: another process on the same GPU would
    otherwise find them taken."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def start_checkpoint(setup: TrialSetup, config: dict) -> tune.Checkpoint | None:
    """Where the trial resumes: its own latest checkpoint, else, for a finalist, the
    checkpoint its screened trial ended on at the finals rung."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None or not config.get(FINALS_OF):
        return checkpoint
    record = trials_store(Path(setup.experiment_dir)).trials[config[FINALS_OF]]
    return tune.Checkpoint(record.checkpoints[setup.finals_rung])


@contextmanager
def resume_folder(checkpoint: tune.Checkpoint | None):
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def report_to_tune(metrics: dict, checkpoint: Path | None) -> None:
    if checkpoint is None:
        tune.report(metrics)
        return
    # On the experiment's linking filesystem, Tune's copy into the trial's storage folder
    # is a hard link (storage.py). The scratch names stay until the trainer retires the
    # checkpoint; Tune's names keep the files.
    tune.report(metrics, checkpoint=tune.Checkpoint(str(checkpoint), filesystem=linking_filesystem()))


SCRATCH_PREFIX = "tune-adapter-trial-"
# Names this machine in scratch folders instead of its hostname: for tests, and for nodes
# that share a hostname but not their processes (containers on the host's network).
NODE_ENV = "TUNE_ADAPTER_NODE_NAME"


def node_name() -> str:
    name = os.environ.get(NODE_ENV) or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def scratch_prefix() -> str:
    """`tune-adapter-trial-PID@NODE@`: a PID means something only on the node that has it."""
    return f"{SCRATCH_PREFIX}{os.getpid()}@{node_name()}@"


def remove_stale_scratch(root: Path) -> None:
    """Scratch folders of trial processes that died (a killed search, or a finished one)
    hold checkpoints (about 0.9 GB each at InfiniteTalk's dims): remove those of dead
    processes of this node. The experiment folder may be on storage
    every node sees, and only the node that made a folder can tell whether its process
    lives."""
    node = node_name()
    for folder in root.glob(f"{SCRATCH_PREFIX}*@*@*"):
        pid, made_on, _ = folder.name.removeprefix(SCRATCH_PREFIX).split("@", 2)
        if made_on == node and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def scratch_root(setup: TrialSetup) -> Path:
    """Where a trial writes its checkpoints before Tune links them into its storage folder:
    inside the experiment, so on the same filesystem as that folder (a link needs one)."""
    root = Path(setup.experiment_dir) / SCRATCH_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    return root


def recorded_result(setup: TrialSetup, config: dict) -> dict | None:
    """The last epoch of a trial the store holds as finished (or screened), else None.

    After a SIGKILL, Tune can run a finished trial again from its stale snapshot.
    """
    store = trials_store(Path(setup.experiment_dir))
    if store is None:
        return None
    record = store.trials.get(config.get(FINALS_OF) or tune.get_context().get_trial_id())
    ended = record is not None and (store.is_finished(record.trial_id)
                                    or (record.status == WAITING and not config.get(FINALS_OF)))
    if not ended or not record.trained():
        return None
    last = max(record.trained())
    return {**record.epochs[last], "epoch": last}


def trials_store(folder: Path) -> TrialStore | None:
    """The store of the trials run in Tune's experiment `folder`: a search's trials.parquet
    in it, or a confirmation's confirm.parquet beside its Tune folder (confirm/)."""
    from ..records.confirmation import CONFIRM_FILE, CONFIRM_FOLDER, ConfirmStore, read_confirm_info
    from ..records.results import TRIALS_FILE, read_info

    if (folder / TRIALS_FILE).is_file():
        return TrialStore(folder, read_info(folder))
    if folder.name == CONFIRM_FOLDER and (folder.parent / CONFIRM_FILE).is_file():
        return ConfirmStore(folder.parent, read_confirm_info(folder.parent))
    return None


def run_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable. Actors are reused, so it sets all its state itself.

    A trial with nothing left to train (finished before a crash, or resumed from its last
    epoch's checkpoint) still reports its last result once: Tune's scheduler requires
    every trial's final result to carry the metric.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    torch.set_num_threads(trial_threads(setup))
    finished = recorded_result(setup, config)
    if finished is not None:
        tune.report(finished)
        return
    gpus = trial_gpus()
    train_config = trial_config(setup, config, gpus)
    device = torch.device(train_config.device)
    cap_gpu_memory(device, gpus)
    try:
        out_of_memory = train_trial(train_config, setup, config)
    finally:
        release_memory(device)
    if out_of_memory:
        # Not retried to success: the same batch size at the same share runs out again (a
        # retry Tune makes under --max-failures ends the same way), so say what to change.
        raise GpuOutOfMemory(f"out of GPU memory at batch size {train_config.batch_size} "
                             f"(a {gpus:g} GPU share): give the space smaller batch sizes "
                             "or each trial a larger --gpus-per-trial")


def trial_data(setup: TrialSetup) -> TrainData:
    """The packs, mapped: with a --data URI, this node's staged copy (staged here first on a
    node that joined after the search began), never a path of the driver's."""
    if setup.data_uri is not None:
        return load_pack_dir(stage_pack(setup.data_uri).folder, shown_as=setup.data_uri)
    return TrainData(open_pack(Path(setup.train_pack)), open_pack(Path(setup.val_pack)))


def train_trial(config: TrainConfig, setup: TrialSetup, tune_config: dict) -> bool:
    """Train the trial, reporting each epoch to Tune; True when CUDA ran out of memory.

    The out-of-memory error is dropped here, not re-raised: its traceback holds the frames,
    and through them the tensors, whose memory the caller then releases.
    """
    data = trial_data(setup)
    reports, start = [], {}

    def report(metrics: dict, checkpoint: Path | None) -> None:
        if metrics["epoch"] == 0:
            # Tune, ASHA and Optuna see epochs from 1; the store's epoch-0 row comes
            # with epoch 1's result (record.py), which carries the start's metrics.
            start.update({START_PREFIX + k: metrics[k] for k in START_METRICS})
            return
        metrics = {**metrics, **start}
        start.clear()
        reports.append(metrics)
        report_to_tune(metrics, checkpoint)

    root = scratch_root(setup)
    remove_stale_scratch(root)
    try:
        with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=root) as scratch, \
                resume_folder(start_checkpoint(setup, tune_config)) as resume_from:
            result = train(config, data, report=report, output_dir=Path(scratch),
                           resume_from=resume_from)
    except torch.cuda.OutOfMemoryError:
        return True
    if not reports and result.last is not None:
        tune.report(dict(result.last))
    return False
