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
from .pack import (PackedClips, default_cache_root, open_pack, pack_manifest, pack_manifests, read_index,
                   verify_pack)
from .remote import is_uri
from .shards import SHARD_BYTES
from .staging import stage_pack
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
    pack_dtype: str = "half",
    shard_bytes: int = SHARD_BYTES,
) -> TrainData:
    """Validate and pack the clips; with neither val option, 10% are held out by path hash."""
    splits = split_entries(manifest, val_manifest, val_fraction)
    train_pack, val_pack = pack_manifests(splits, cache_root, pack_dtype, shard_bytes=shard_bytes)
    return TrainData(train=train_pack, val=val_pack)


def load_training_data(manifest: Path | None, val_manifest: Path | None, val_fraction: float | None,
                       cache_root: Path | None, pack_dtype: str = "half", data: str | Path | None = None,
                       shard_bytes: int = SHARD_BYTES) -> TrainData:
    """The clips of a manifest (packed on first use), or the packs of a --data folder or URI
    (a URI's pack staged into this node's cache first)."""
    if data is not None:
        given = [flag for flag, value in (("--manifest", manifest), ("--val-manifest", val_manifest),
                                          ("--val-fraction", val_fraction)) if value is not None]
        if given:
            raise DataError(f"--data {data} holds its own training and validation packs: drop {', '.join(given)}")
        if is_uri(data):
            return load_pack_dir(stage_pack(str(data), cache_root).folder, shown_as=str(data))
        return load_pack_dir(data)
    if manifest is None:
        raise DataError("give --manifest M (a JSON clip list) or --data DIR (a folder from tune-adapter pack)")
    return load_data(manifest, val_manifest, val_fraction, cache_root, pack_dtype, shard_bytes)


def split_entries(manifest: str | Path, val_manifest: str | Path | None,
                  val_fraction: float | None) -> list[tuple[list[ClipEntry], str]]:
    """(clips, source) for training and validation, as --val-manifest or --val-fraction say."""
    if val_manifest is not None and val_fraction is not None:
        raise DataError("give --val-manifest or --val-fraction, not both")
    entries = read_manifest(manifest)
    if val_manifest is not None:
        return [(entries, str(manifest)), (read_manifest(val_manifest), str(val_manifest))]
    train, val = split_validation(entries, 0.1 if val_fraction is None else val_fraction)
    return [(train, str(manifest)), (val, f"{manifest} (held-out clips)")]


def split_roots(folder: Path) -> tuple[Path, Path]:
    """Where `tune-adapter pack --out FOLDER` puts the training and validation packs."""
    return Path(folder) / "train", Path(folder) / "val"


def load_pack_dir(folder: str | Path, shown_as: str | None = None) -> TrainData:
    """The packs `tune-adapter pack` wrote (--data): checked against their sha256 once.
    `shown_as`: what the user gave, where `folder` is its staged copy."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder} does not exist: build it with tune-adapter pack --manifest M --out {folder}")
    roots = split_roots(folder)
    indexes = [read_index(root, rebuild_hint=str(folder)) for root in roots]  # both, before any long check
    for root, index in zip(roots, indexes):
        verify_pack(root, index)
    train, val = (open_pack(root, f"{shown_as or folder} ({split})", index)
                  for root, index, split in zip(roots, indexes, ("training", "validation")))
    return TrainData(train=train, val=val)


__all__ = [
    "Batch", "BatchGatherer", "BatchSampler", "ClipEntry", "PackedClips", "TrainData",
    "default_cache_root", "load_data", "load_pack_dir", "load_training_data", "open_pack", "pack_manifest",
    "pack_manifests", "padded_fraction", "read_manifest", "split_entries", "split_roots", "split_validation",
    "verify_pack",
]
