"""What a search runs with: one typed dataclass, resolved from flags and the space file."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError

# Flags a space file may default with an upper-case constant (NUM_SAMPLES = 32, ...): a
# flag left out takes the space's constant, else SearchOptions' default.
SPACE_CONSTANTS = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "cpus_per_trial",
                   "gpus_per_trial", "max_concurrent", "max_failures", "seed", "init_from",
                   "init_partial")
SHARED_GPU = 0.25  # gpus_per_trial when it is None and the cluster has GPUs


@dataclass(frozen=True)
class SearchOptions:
    space: Path
    manifest: Path | None = None  # None: the quickstart's synthetic dataset
    val_manifest: Path | None = None
    val_fraction: float | None = None
    num_samples: int = 16
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 3
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: SHARED_GPU when the cluster has GPUs, else 0
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs and GPUs allow
    max_failures: int = 1
    seed: int = 0
    storage: Path = Path("results")
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
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        checks = {
            "--num-samples": self.num_samples >= 1, "--max-epochs": self.max_epochs >= 1,
            "--grace-period": 1 <= self.grace_period <= self.max_epochs,
            "--reduction-factor": self.reduction_factor >= 2,
            "--cpus-per-trial": self.cpus_per_trial > 0,
            "--gpus-per-trial": self.gpus_per_trial is None or self.gpus_per_trial >= 0,
            "--max-concurrent": self.max_concurrent is None or self.max_concurrent >= 1,
            "--max-failures": self.max_failures >= 0,
            "--checkpoint-every": self.checkpoint_every >= 1,
            "--sampler": self.sampler in ("tpe", "random"),
        }
        for flag, ok in checks.items():
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise ConfigError(f"{flag} {value} is out of range (grace period must lie in 1..max epochs)")
        gpus = self.gpus_per_trial
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            # Ray shares a GPU only in fractions of one; above one it hands out whole GPUs.
            raise ConfigError(f"--gpus-per-trial {gpus:g}: above 1, a trial takes whole GPUs; "
                              f"use {int(gpus)} or {int(gpus) + 1}, or 1 or less to share one GPU")

    @property
    def experiment_name(self) -> str:
        return self.name or self.space.stem

    @property
    def experiment_dir(self) -> Path:
        return (Path(self.storage) / self.experiment_name).resolve()


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
    return SearchOptions(**values)
