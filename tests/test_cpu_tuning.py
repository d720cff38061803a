import json
import os
import subprocess
import sys

import pytest
import torch

from tune_adapter import cpu_tuning

# Run in a child interpreter: glibc's settings are process-wide and cannot be put back, so
# the test leaves this process's malloc as it found it.
FREED_BYTES_RETURNED = """
import json, os, sys
import torch
from tune_adapter import cpu_tuning

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

kept = cpu_tuning.start_run(sys.argv[1] == "keep")
block = torch.ones(64 << 18)  # 64 MiB, every page touched
before = rss()
del block
after_free = rss()
cpu_tuning.before_validation()
print(json.dumps({"kept": kept, "freed": before - after_free, "trimmed": before - rss()}))
"""
MB = 1 << 20


def freed_memory(mode: str, env: dict | None = None) -> dict:
    child_env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", FREED_BYTES_RETURNED, mode], env=child_env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(cpu_tuning._glibc() is None, reason="glibc's malloc only")
def test_the_kept_heap_keeps_freed_memory_until_validation():
    kept = freed_memory("keep", {cpu_tuning.KEEP_ENV: ""})
    assert kept["kept"] is True
    assert kept["freed"] < 8 * MB  # still resident after the tensor is freed
    assert kept["trimmed"] > 48 * MB  # given back before validation
    returned = freed_memory("return", {cpu_tuning.KEEP_ENV: ""})
    assert returned["kept"] is False and returned["freed"] > 48 * MB


@pytest.mark.skipif(cpu_tuning._glibc() is None, reason="glibc's malloc only")
def test_the_environment_overrides_the_config_either_way():
    assert freed_memory("keep", {cpu_tuning.KEEP_ENV: "0"})["kept"] is False
    forced = freed_memory("return", {cpu_tuning.KEEP_ENV: "1"})
    assert forced["kept"] is True and forced["freed"] < 8 * MB


@pytest.mark.parametrize("max_norm", [1e3, 1e-3])  # within bounds (pass skipped), and not
def test_clip_gradients_equals_clip_grad_norm(max_norm):
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (8, 64)]
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    theirs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    cpu_tuning.clip_gradients(ours, max_norm)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))


def test_importing_the_package_changes_no_environment():
    code = ("import os, json; before = dict(os.environ); import tune_adapter, tune_adapter.trainer, "
            "tune_adapter.cli; print(json.dumps(dict(os.environ) == before))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.splitlines()[-1]) is True
