"""The trainer's configuration: one typed dataclass, passed explicitly everywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import ConfigError
from .loss import LOSSES
from .windows import check_window


@dataclass(frozen=True)
class TrainConfig:
    # Hyperparameters a search samples.
    lr: float = 1e-4
    batch_size: int = 2
    audio_window: int = 5
    vae_scale: int = 4
    weight_decay: float = 0.01
    # Training.
    epochs: int = 5
    loss: str = "l1"
    grad_clip: float = 1.0
    mixed_precision: bool = False
    seed: int = 0
    bucket_by_length: bool = True
    # Adapter dims not fixed by the data (K and D default to the targets' own).
    intermediate_dim: int = 512
    context_tokens: int | None = None
    output_dim: int | None = None
    norm_output_audio: bool = True
    # Where and how it runs.
    device: str = "auto"
    num_workers: int = 0
    # CPU tuning (cpu_tuning.py) for runs on the CPU; no effect on a GPU.
    cpu_tuning: bool = True
    # Part of it: keep freed memory in the heap for the next step, a faster CPU step for
    # more resident memory. Searches running trials side by side turn it off;
    # TUNE_ADAPTER_KEEP_FREED_MEMORY=0/1 overrides either way.
    keep_freed_memory: bool = True
    save_every: int = 1
    # The last epoch's checkpoint keeps AdamW's moments, so the run can be continued. A
    # search turns this off: nothing resumes a finished trial, and each trial's kept
    # checkpoint is then 300 MB instead of 900 MB (InfiniteTalk's dims).
    moments_in_last_checkpoint: bool = True
    log_every: int = 50

    def __post_init__(self):
        check_window(self.audio_window, self.vae_scale)
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs,
                    "intermediate_dim": self.intermediate_dim, "save_every": self.save_every,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{_flag(name)} is {value!r}: it must be > 0")
        for name in ("weight_decay", "grad_clip", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} is {getattr(self, name)!r}: it must be >= 0")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss!r} is unknown: choose one of {', '.join(LOSSES)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def with_values(self, **values) -> "TrainConfig":
        return replace(self, **values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
