"""What a search runs with: one typed dataclass, resolved from flags and the space file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import TrainConfig
from .uri_storage import is_remote, join, local_path, mirror_root
from ..errors import ConfigError

# Flags a space file may default with an upper-case constant (NUM_SAMPLES = 32, ...): a
# flag left out takes the space's constant, else SearchOptions' default.
SPACE_CONSTANTS = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "finalists",
                   "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "seed", "init_from",
                   "init_partial", "time_budget")
SHARED_GPU = 0.25  # gpus_per_trial when it is None and the cluster has GPUs
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# A search's recorded data (driver.data_sources) without these keys was made before them:
# its manifests were packed in float32, in one shard's worth of 256 MiB.
DATA_RECORDED_BEFORE = {"data": None, "pack_dtype": "float32", "shard_mb": 256.0}


@dataclass(frozen=True)
class SearchOptions:
    space: Path
    manifest: Path | None = None  # None: the quickstart's synthetic dataset
    val_manifest: Path | None = None
    val_fraction: float | None = None
    data: str | None = None  # a folder or URI from `tune-adapter pack`, instead of the manifests
    pack_dtype: str = "half"  # how a manifest's clips are packed (data/shards.py)
    shard_mb: float = 256.0  # and in shards of about this size
    shuffle_window: int = TrainConfig.shuffle_window  # shards whose clips a trial shuffles together
    num_samples: int = 16
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 3
    # Trials that train to max epochs once every trial is screened (scheduler.py); 0: Ray's
    # ASHA alone, which promotes to the end as trials arrive.
    finalists: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: SHARED_GPU when the cluster has GPUs, else 0
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs and GPUs allow
    max_failures: int = 1
    seed: int = 0
    storage: str | Path = Path("results")  # a folder, or a URI (s3://, gs://): uri_storage.py
    name: str | None = None  # None: the space file's name
    resume: bool = False
    address: str | None = None
    mixed_precision: bool = False
    # Checkpoint every N epochs (and at a trial's last): at InfiniteTalk's sizes a
    # checkpoint is about 0.9 GB, written once to scratch and once by Tune to storage.
    checkpoint_every: int = 1
    cache_dir: Path | None = None
    quiet: bool = False  # no live table (tests, scripts)
    baseline: bool = True  # run the space's BASELINE as the first trial (--no-baseline: off)
    sampler: str = "tpe"  # "tpe", or "random" (the quality benchmark's comparison)
    init_from: Path | None = None  # every trial starts from this adapter (init_from.py)
    init_partial: bool = False
    continue_search: bool = False  # add trials to the finished experiment --name (study.py)
    warm_start: tuple[Path, ...] = ()  # experiments whose trials the sampler starts from
    time_budget: float | None = None  # seconds, all runs of the experiment (budget.py)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        checks = {  # flag: (in range, the range it must lie in)
            "--num-samples": (self.num_samples >= 1, "at least 1"),
            "--max-epochs": (self.max_epochs >= 1, "at least 1"),
            "--grace-period": (1 <= self.grace_period <= self.max_epochs,
                               f"1..{self.max_epochs}, the max epochs"),
            "--reduction-factor": (self.reduction_factor >= 2, "at least 2: ASHA keeps 1/R of the trials at each rung"),
            "--finalists": (self.finalists >= 0, "at least 0 (0: ASHA alone)"),
            "--cpus-per-trial": (self.cpus_per_trial > 0, "above 0"),
            "--gpus-per-trial": (self.gpus_per_trial is None or self.gpus_per_trial >= 0, "at least 0"),
            "--max-concurrent": (self.max_concurrent is None or self.max_concurrent >= 1, "at least 1"),
            "--max-failures": (self.max_failures >= 0, "at least 0"),
            "--checkpoint-every": (self.checkpoint_every >= 1, "at least 1"),
            "--sampler": (self.sampler in ("tpe", "random"), "tpe or random"),
            "--time-budget": (self.time_budget is None or self.time_budget > 0, "above 0"),
            "--shard-mb": (self.shard_mb > 0, "above 0"),
            "--shuffle-window": (self.shuffle_window >= 0, "at least 0 (0: the whole pack)"),
        }
        for flag, (ok, allowed) in checks.items():
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise ConfigError(f"{flag} {value} is out of range: it must be {allowed}")
        gpus = self.gpus_per_trial
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            # Ray shares a GPU only in fractions of one; above one it hands out whole GPUs.
            raise ConfigError(f"--gpus-per-trial {gpus:g}: above 1, a trial takes whole GPUs; "
                              f"use {int(gpus)} or {int(gpus) + 1}, or 1 or less to share one GPU")

    @property
    def experiment_name(self) -> str:
        return self.name or self.space.stem

    @property
    def storage_uri(self) -> str | None:
        """URI/NAME of the experiment where --storage is object storage, else None."""
        return join(str(self.storage), self.experiment_name) if is_remote(self.storage) else None

    @property
    def local_storage(self) -> Path:
        """The folder of experiments on this machine: --storage, or a URI's local mirror."""
        return mirror_root(str(self.storage)) if is_remote(self.storage) else local_path(self.storage)

    @property
    def experiment_dir(self) -> Path:
        """The experiment's folder here: tune-adapter's files (a URI's mirror of them)."""
        return (self.local_storage / self.experiment_name).resolve()


def resolve_options(space_defaults: dict, **flags) -> SearchOptions:
    """Flags given on the command line win, then the space file's constants, then ours."""
    names = {f.name for f in fields(SearchOptions)}
    values = dict(space_defaults)
    for key, value in flags.items():
        if key not in names:
            raise TypeError(key)
        if value is None and key in SPACE_CONSTANTS:
            continue  # not given: the space's constant, else SearchOptions' default
        values[key] = value
    values["time_budget"] = parse_duration(values.get("time_budget"))
    return SearchOptions(**values)


def parse_duration(text: str | float | int | None, flag: str = "--time-budget") -> float | None:
    """Seconds from `2h`, `45m`, `1h30m`, `90s` or a number of seconds."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    parts = re.fullmatch(r"\s*((\d+(\.\d+)?)\s*([smhd])\s*)+", text.lower())
    if parts is None:
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
            return float(text)
        raise ConfigError(f"{flag} {text!r} is not a duration: use e.g. 2h, 45m, 1h30m or 90s")
    return sum(float(n) * UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)\s*([smhd])", text.lower()))


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

