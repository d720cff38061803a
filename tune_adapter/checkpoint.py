"""Training checkpoints: `adapter.safetensors`, `optimizer.safetensors` + `optimizer.json`,
`state.json`.

The optimizer's tensors (AdamW's moments) are written as safetensors: faster than
`torch.save`, which checksums every byte, and no pickle to read back. Checkpoints of
earlier versions (`optimizer.pt`) still load.

A checkpoint folder is written beside its final place, fsynced and renamed into it
(atomic.py), so a crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .errors import ConfigError

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_REST = "optimizer.json"
LEGACY_OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    optimizer: dict | None
    scaler: dict | None
    state: dict


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scaler, state: dict) -> Path:
    """Write a checkpoint beside `folder` and rename it into place; without the optimizer's
    state when `optimizer` is None (it then cannot be resumed exactly, only exported or
    evaluated)."""

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, staging / ADAPTER_FILE, metadata={"format": "pt"})
        if optimizer is not None:
            save_optimizer(staging, optimizer.state_dict(), scaler.state_dict() if scaler is not None else None)
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1))

    atomic_write(Path(folder), write)
    return Path(folder)


def save_optimizer(folder: Path, optimizer_state: dict, scaler_state: dict | None) -> None:
    """Tensors of the optimizer's state dict as safetensors, the rest as JSON."""
    tensors, rest = {}, {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous()
            else:
                rest.setdefault(str(index), {})[name] = value
    save_file(tensors, folder / OPTIMIZER_TENSORS)
    (folder / OPTIMIZER_REST).write_text(json.dumps(
        {"param_groups": optimizer_state["param_groups"], "state": rest, "scaler": scaler_state}))


def load_optimizer(folder: Path) -> dict:
    """`{"optimizer": state dict, "scaler": state dict or None}` as `save_optimizer` wrote them."""
    rest = json.loads((folder / OPTIMIZER_REST).read_text())
    state: dict[int, dict] = {int(k): dict(v) for k, v in rest["state"].items()}
    for key, tensor in load_file(folder / OPTIMIZER_TENSORS).items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    return {"optimizer": {"state": state, "param_groups": rest["param_groups"]},
            "scaler": rest["scaler"]}


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file() and (Path(folder) / ADAPTER_FILE).is_file()


def load_checkpoint(folder: Path, with_optimizer: bool = True) -> Checkpoint:
    folder = Path(folder)
    if not is_checkpoint(folder):
        raise ConfigError(
            f"{folder} is not a checkpoint (no {STATE_FILE} and {ADAPTER_FILE}): give a "
            "checkpoint folder or the output folder of a run"
        )
    state = json.loads((folder / STATE_FILE).read_text())
    extra = {"optimizer": None, "scaler": None}
    if with_optimizer and (folder / OPTIMIZER_REST).is_file():
        extra = load_optimizer(folder)
    elif with_optimizer and (folder / LEGACY_OPTIMIZER_FILE).is_file():
        extra = torch.load(folder / LEGACY_OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return Checkpoint(load_file(folder / ADAPTER_FILE), extra["optimizer"], extra["scaler"], state)


def latest_checkpoint(path: Path) -> Path:
    """`path` itself when it is a checkpoint, else the newest one under `path/checkpoints`."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    found = sorted(p for p in (path / "checkpoints").glob("epoch_*") if is_checkpoint(p))
    if not found:
        raise ConfigError(f"--resume {path}: no checkpoint there (looked for {path}/checkpoints/epoch_*)")
    return found[-1]
