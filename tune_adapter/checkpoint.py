"""Training checkpoints: `adapter.safetensors`, `optimizer.pt`, `state.json`.

A checkpoint folder is written beside its final place and renamed into it, so a crash
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    optimizer: dict | None
    scaler: dict | None
    state: dict


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scaler, state: dict) -> Path:
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, staging / ADAPTER_FILE, metadata={"format": "pt"})
    torch.save({"optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None},
               staging / OPTIMIZER_FILE)
    (staging / STATE_FILE).write_text(json.dumps(state, indent=1))
    _replace_folder(staging, folder)
    return folder


def _replace_folder(staging: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


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
    if with_optimizer and (folder / OPTIMIZER_FILE).is_file():
        extra = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
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
