"""Small builders for hand-made datasets in tests."""

import json
from pathlib import Path

import torch


def write_clip(folder: Path, name: str, audio, target) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(audio, folder / f"{name}_audio.pt")
    torch.save(target, folder / f"{name}_tokens.pt")
    return {"audio": f"{name}_audio.pt", "target": f"{name}_tokens.pt"}


def write_manifest(folder: Path, entries, name="train.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(entries) if not isinstance(entries, str) else entries)
    return path
