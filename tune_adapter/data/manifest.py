"""Manifest parsing: a JSON list of clips, each `{"audio", "target", "weight"?}`.

Relative paths resolve against the manifest's folder. Problems raise `DataError` with one
line naming the manifest entry and the fix; nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class ClipEntry:
    position: int  # index in the manifest's list
    audio: Path
    target: Path
    weight: float
    audio_as_written: str  # the manifest's own spelling: stable across machines
    manifest: Path

    @property
    def label(self) -> str:
        return f"{self.manifest.name} entry {self.position} ({self.audio_as_written})"


def read_manifest(path: str | Path) -> list[ClipEntry]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist: give the path of a JSON clip list")
    try:
        items = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} is not JSON ({exc}): it must be a JSON list") from None
    if not isinstance(items, list):
        raise DataError(
            f"manifest {path} holds a JSON {type(items).__name__}, not a list: "
            'write [{"audio": ..., "target": ...}, ...]'
        )
    if not items:
        raise DataError(f"manifest {path} is an empty list: add at least one clip")
    return [_entry(path, i, item) for i, item in enumerate(items)]


def _entry(manifest: Path, position: int, item: object) -> ClipEntry:
    where = f"manifest {manifest} entry {position}"
    if not isinstance(item, dict):
        raise DataError(f'{where} is not an object: write {{"audio": ..., "target": ...}}')
    for key in ("audio", "target"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise DataError(f'{where} has no "{key}" path: add "{key}": "path/to/file.pt"')
    weight = _weight(where, item.get("weight", 1.0))
    audio = _resolve(manifest, where, "audio", item["audio"])
    target = _resolve(manifest, where, "target", item["target"])
    return ClipEntry(position, audio, target, weight, item["audio"], manifest)


def _weight(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f'{where}: "weight" is {value!r}, not a number: give a number >= 0')
    if not math.isfinite(value) or value < 0:
        raise DataError(f'{where}: "weight" is {value!r}: give a finite number >= 0')
    return float(value)


def _resolve(manifest: Path, where: str, key: str, written: str) -> Path:
    path = Path(written)
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.is_file():
        raise DataError(
            f'{where}: "{key}" file {path} does not exist: fix the path '
            "(relative paths start at the manifest's folder)"
        )
    return path.resolve()


def split_fraction(name: str) -> float:
    """A clip's place in [0, 1), from a hash of its path: the same on every run."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_validation(
    entries: list[ClipEntry], fraction: float
) -> tuple[list[ClipEntry], list[ClipEntry]]:
    """Hold out about `fraction` of the clips, chosen by path hash, never by an RNG.

    At least one clip goes to each side when there are two or more.
    """
    if not 0 < fraction < 1:
        raise DataError(f"--val-fraction {fraction} must lie strictly between 0 and 1")
    if len(entries) < 2:
        raise DataError(
            f"--val-fraction needs at least 2 clips and the manifest has {len(entries)}: "
            "add clips or give --val-manifest"
        )
    held = held_out([e.audio_as_written for e in entries], fraction)
    train = [e for e in entries if e.audio_as_written not in held]
    val = [e for e in entries if e.audio_as_written in held]
    return train, val


def held_out(names: list[str], fraction: float) -> set[str]:
    """The names a `fraction` split holds out: those hashing below it, at least one, never all."""
    ranked = sorted(names, key=split_fraction)
    n_val = sum(split_fraction(name) < fraction for name in names)
    return set(ranked[:min(max(n_val, 1), len(names) - 1)])
