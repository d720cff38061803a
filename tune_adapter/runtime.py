"""Device and numeric precision of a run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full float32 tensors
    grad_scaling: bool  # float16 autocast needs a GradScaler; bfloat16 does not
    # CPU mixed precision: float32 tensors, bf16 matrix products inside oneDNN.
    bf16_matmul: bool = False

    def autocast(self):
        """The context a forward (and its backward) runs in."""
        if self.bf16_matmul:
            return bf16_matmul()
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward_precision(self):
        """The context backward runs in: autocast needs none, the oneDNN setting does."""
        return bf16_matmul() if self.bf16_matmul else contextlib.nullcontext()

    @property
    def precision(self) -> str:
        if self.bf16_matmul:
            return "bf16"
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    @property
    def pin_memory(self) -> bool:
        # Page-locked host batches let the copy to the GPU run asynchronously
        # (`non_blocking=True`); on the CPU there is no copy, so pinning is pure cost.
        return self.device.type == "cuda"


@contextlib.contextmanager
def bf16_matmul():
    """float32 matrix products computed by oneDNN in bf16 (AMX), float32 in and out.

    Chosen over CPU bf16 autocast by measurement (docs/performance.md): autocast casts every
    float32 weight to bf16 each forward and the bf16 weight gradients back in backward;
    oneDNN converts while it packs the operands, so those passes disappear, and the weight
    gradients come out in float32 with float32 accumulation. The setting is process-wide,
    so it is restored on exit: nothing outside the step sees it.
    """
    settings = torch.backends.mkldnn.matmul
    previous = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        yield
    finally:
        settings.fp32_precision = previous


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
        return Runtime(device, None, False, bf16_matmul=True)
    if native_bf16(device):
        return Runtime(device, torch.bfloat16, False)
    return Runtime(device, torch.float16, True)


def native_bf16(device: torch.device) -> bool:
    """Whether this run's GPU computes bf16 natively (Ampere, compute capability 8.0, on).

    Not `torch.cuda.is_bf16_supported()`: it also counts emulated bf16 (T4, V100: slower
    than fp32) and asks about the current device rather than the run's `cuda:N`.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)
