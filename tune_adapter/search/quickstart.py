"""The dataset a search runs on when no --manifest is given: made once, then reused."""

from __future__ import annotations

from pathlib import Path

from ..synth import SynthSpec, write_synth


def quickstart_manifests(storage: Path) -> tuple[Path, Path]:
    folder = Path(storage) / "synth"
    train, val = folder / "train.json", folder / "val.json"
    if not (train.is_file() and val.is_file() and (folder / "synth.json").is_file()):
        write_synth(folder, SynthSpec())
    return train, val
