"""Device and precision choices, with torch.cuda faked: no GPU is needed."""

import pytest
import torch

from tune_adapter.runtime import resolve_runtime

# Capabilities of a machine with an A100 (8.0) as cuda:0 and a T4 (7.5) as cuda:1.
CAPABILITY = {0: (8, 0), 1: (7, 5)}


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # As torch's default does: emulated bf16 counts, and the current device is asked.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    def capability(device=None):
        index = torch.device(device).index if device is not None else None
        return CAPABILITY[0 if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)


@pytest.mark.parametrize("device, precision, scaler", [
    ("cuda:0", "bf16", False), ("cuda", "bf16", False), ("cuda:1", "fp16", True),
])
def test_mixed_precision_follows_the_runs_own_gpu(two_gpus, device, precision, scaler):
    runtime = resolve_runtime(device, mixed_precision=True)
    assert (runtime.precision, runtime.grad_scaling) == (precision, scaler)
    assert runtime.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def test_full_precision_and_cpu_are_unchanged(two_gpus):
    assert resolve_runtime("cuda:1", mixed_precision=False).precision == "fp32"
    cpu = resolve_runtime("cpu", mixed_precision=True)
    assert cpu.bf16_matmul and not cpu.grad_scaling
