"""Data: manifests -> validated packed caches -> batches.

`load_data` is the one entry point: it reads the manifest(s), splits off validation clips,
and returns the two packs, building them only when the cache has none for this content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .batches import Batch, BatchGatherer
from .manifest import ClipEntry, read_manifest, split_validation
from .pack import PackedClips, default_cache_root, open_pack, pack_manifest, pack_manifests
from .sampler import BatchSampler, padded_fraction


@dataclass
class TrainData:
    train: PackedClips
    val: PackedClips


def load_data(
    manifest: str | Path,
    val_manifest: str | Path | None = None,
    val_fraction: float | None = None,
    cache_root: Path | None = None,
) -> TrainData:
    """Validate and pack the clips; with neither val option, 10% are held out by path hash."""
    if val_manifest is not None and val_fraction is not None:
        raise DataError("give --val-manifest or --val-fraction, not both")
    entries = read_manifest(manifest)
    if val_manifest is not None:
        train, val = entries, read_manifest(val_manifest)
        val_source = str(val_manifest)
    else:
        train, val = split_validation(entries, 0.1 if val_fraction is None else val_fraction)
        val_source = f"{manifest} (held-out clips)"
    train_pack, val_pack = pack_manifests([(train, str(manifest)), (val, val_source)], cache_root)
    return TrainData(train=train_pack, val=val_pack)


__all__ = [
    "Batch", "BatchGatherer", "BatchSampler", "ClipEntry", "PackedClips", "TrainData",
    "default_cache_root", "load_data", "open_pack", "pack_manifest", "pack_manifests", "padded_fraction",
    "read_manifest", "split_validation",
]
