"""The trainer's configuration: one typed dataclass, passed explicitly everywhere.

Each field states its option once: the default, the `train` flag's help, the range rule
that both `TrainConfig` and the search-space probe apply, and whether it is a `train` flag
and a parameter a space may set (`option`). A plain field is a flag and searchable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from numbers import Integral, Real
from typing import Callable

from .errors import ConfigError

LOSSES = ("l1", "mse", "smooth_l1")  # the element losses of loss.py


@dataclass(frozen=True)
class Rule:
    """A range rule: `ok(value)`, and what a good value is (ends "it must be ...")."""

    ok: Callable[[object], bool]
    wanted: str

    def problem(self, value) -> str | None:
        """None for a good value, else the end of its one-line error: "it must be ..."."""
        try:
            good = bool(self.ok(value))
        except TypeError:
            good = False
        return None if good else f"it must be {self.wanted}"


def _int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


AT_LEAST_1 = Rule(lambda v: _int(v) and v >= 1, "an integer >= 1")
OPTIONAL_AT_LEAST_1 = Rule(lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1")
AT_LEAST_0 = Rule(lambda v: _int(v) and v >= 0, "an integer >= 0")
POSITIVE = Rule(lambda v: _number(v) and v > 0, "> 0")
NOT_NEGATIVE = Rule(lambda v: _number(v) and v >= 0, ">= 0")
AUDIO_WINDOW = Rule(lambda v: _int(v) and v >= 1 and v % 2 == 1,
                    "an odd integer >= 1 (it needs a centre frame), e.g. 5")
VAE_SCALE = Rule(lambda v: _int(v) and v >= 2, "an integer >= 2 (InfiniteTalk's VAE uses 4)")
LOSS = Rule(lambda v: v in LOSSES, "one of " + ", ".join(LOSSES))


def option(default, help: str | None = None, *, rule: Rule | None = None, flag: bool = True,
           search: bool = True):
    """A field stated once: default, flag help, range rule; `flag`/`search`: whether it is a
    `train` flag and whether a search space may set it."""
    return field(default=default, metadata={"help": help, "rule": rule, "flag": flag, "search": search})


@dataclass(frozen=True)
class TrainConfig:
    # Optimisation; a search samples lr, batch_size and weight_decay. (The `train` flags
    # come in this order.)
    batch_size: int = option(2, rule=AT_LEAST_1)
    epochs: int = option(5, rule=AT_LEAST_1, search=False)
    lr: float = option(1e-4, rule=POSITIVE)
    weight_decay: float = option(0.01, rule=NOT_NEGATIVE)
    # The windows: W frames around each frame, S frames per latent.
    audio_window: int = option(5, "Frames per window W (odd)", rule=AUDIO_WINDOW)
    vae_scale: int = option(4, "VAE temporal downsampling S", rule=VAE_SCALE)
    # The step.
    loss: str = option("l1", "l1, mse or smooth_l1", rule=LOSS)
    grad_clip: float = option(1.0, "Max gradient norm; 0 turns clipping off", rule=NOT_NEGATIVE)
    mixed_precision: bool = option(False, "bf16 autocast (fp16 + grad scaling on GPUs without bf16)")
    bucket_by_length: bool = option(True, flag=False)
    shuffle_window: int = option(2, "Shards of the pack whose clips are shuffled together (0: the whole pack); "
                                    "a few keep a pack larger than memory read at disk speed", rule=AT_LEAST_0)
    # Where and how it runs.
    device: str = option("auto", "auto, cpu, cuda or cuda:N", search=False)
    num_workers: int = option(0, "Batch-gathering worker processes", rule=AT_LEAST_0, search=False)
    save_every: int = option(1, "Checkpoint every N epochs (and at the end)", rule=AT_LEAST_1,
                             search=False)
    log_every: int = option(50, "Show the step loss every N steps", rule=AT_LEAST_1, search=False)
    cpu_tuning: bool = option(True, "CPU runs: glibc's kept heap, huge pages, a one-pass gradient "
                                    "clip (cpu_tuning.py); no effect on a GPU", search=False)
    # Part of CPU tuning: keep freed memory in the heap for the next step, a faster step for
    # more resident memory. Searches running trials side by side turn it off;
    # TUNE_ADAPTER_KEEP_FREED_MEMORY=0/1 overrides either way.
    keep_freed_memory: bool = option(True, flag=False, search=False)
    # The last epoch's checkpoint keeps AdamW's moments, so the run can be continued. A
    # search turns this off: nothing resumes a finished trial, and each trial's kept
    # checkpoint is then 300 MB instead of 900 MB (InfiniteTalk's dims).
    moments_in_last_checkpoint: bool = option(True, flag=False, search=False)
    # Adapter dims not fixed by the data (K and D default to the targets' own).
    context_tokens: int | None = option(None, "K; must match the targets [default: theirs]")
    output_dim: int | None = option(None, "D; must match the targets [default: theirs]")
    intermediate_dim: int | None = option(None, "I \\[default: 512, or the --init-from adapter's]",
                                          rule=OPTIONAL_AT_LEAST_1)
    norm_output_audio: bool = option(True, "LayerNorm on the output tokens (InfiniteTalk: on)")
    # Where the weights start (init_from.py): random, or a released or earlier adapter.
    init_from: str | None = option(
        None, "Start from this adapter: InfiniteTalk's weights (only audio_proj.* is read), an "
        "exported folder, or a run, checkpoint or trial folder", search=False)
    init_partial: bool = option(
        False, "With --init-from: load the layers whose shapes fit, start the others fresh",
        search=False)
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            problem = option_problem(f.name, value)
            if problem:
                raise ConfigError(f"{flag_name(f.name)} is {value!r}: {problem}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def with_values(self, **values) -> "TrainConfig":
        return replace(self, **values)


RULES = {f.name: f.metadata["rule"] for f in fields(TrainConfig) if f.metadata.get("rule")}
SEARCHABLE = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("search", True))


def option_problem(name: str, value) -> str | None:
    """What is wrong with `value` for option `name` ("it must be ..."), or None."""
    rule = RULES.get(name)
    return rule.problem(value) if rule else None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")
