"""Device and numeric precision of a run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full float32
    grad_scaling: bool  # float16 autocast needs a GradScaler; bfloat16 does not

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: torch {torch.__version__} sees no CUDA device here; "
                "use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_runtime(device_name: str, mixed_precision: bool) -> Runtime:
    device = resolve_device(device_name)
    if not mixed_precision:
        return Runtime(device, None, False)
    if device.type == "cpu":
        return Runtime(device, torch.bfloat16, False)
    if torch.cuda.is_bf16_supported():
        return Runtime(device, torch.bfloat16, False)
    return Runtime(device, torch.float16, True)
