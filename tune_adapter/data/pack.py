"""The packed cache: validated clips stored back to back in memory-mappable files.

A pack is a folder holding `audio.f32` (`[frames, L, C]`), `targets.f32` (`[rows, K, D]`)
and `index.json` (offsets, lengths, weights, names, and a hash of each clip's audio tensor,
so a test set can be checked apart from them by content). Its name is a hash of the clip list,
the files' sizes and modification times, so an unchanged manifest reuses it and any change
builds a new one. Every reader maps the same files: concurrent trials share one copy of the
data through the page cache, and data larger than memory still works.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..windows import latents_of_lengths
from .clips import (
    ClipShapes,
    check_same_shapes,
    check_target_length,
    latent_scales,
    load_clip,
    shapes_of,
)
from .manifest import ClipEntry

PACK_FORMAT = 1
CACHE_ENV = "TUNE_ADAPTER_CACHE"


def default_cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tune-adapter" / "packs"


def pack_key(entries: list[ClipEntry]) -> str:
    """Hash of what the pack's content depends on: paths, weights, sizes and mtimes."""
    h = hashlib.sha256(f"tune-adapter pack v{PACK_FORMAT}\n".encode())
    for e in entries:
        a, t = e.audio.stat(), e.target.stat()
        fields = [e.audio_as_written, str(e.audio), a.st_size, a.st_mtime_ns,
                  str(e.target), t.st_size, t.st_mtime_ns, repr(e.weight)]
        h.update(json.dumps(fields).encode() + b"\n")
    return h.hexdigest()[:32]


@dataclass
class PackedClips:
    """An opened pack: memory-mapped tensors and per-clip index arrays."""

    root: Path
    source: str
    names: list[str]
    audio: torch.Tensor  # [frames, L, C], mapped
    targets: torch.Tensor  # [rows, K, D], mapped
    frames: torch.Tensor  # [clips] video frames T per clip
    audio_offsets: torch.Tensor  # [clips]
    target_rows: torch.Tensor  # [clips]
    target_offsets: torch.Tensor  # [clips]
    weights: torch.Tensor  # [clips]
    shapes: ClipShapes

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_frames(self) -> int:
        return int(self.frames.sum())

    def is_frame_layout(self) -> bool:
        return bool((self.target_rows == self.frames).all())

    def fits_latents(self, vae_scale: int) -> bool:
        return bool((self.target_rows == latents_of_lengths(self.frames, vae_scale)).all())

    def latent_scales(self) -> list[int]:
        """VAE scales whose latent counts match every clip's target (per-latent layout)."""
        fits = latent_scales(int(self.frames[0]), int(self.target_rows[0]), int(self.frames.max()))
        return [s for s in fits if self.fits_latents(s)]

    def layout(self) -> str:
        return "frame" if self.is_frame_layout() else "latent"

    def layout_for(self, vae_scale: int) -> str:
        """'frame' or 'latent': how targets are compared at this VAE scale, or a ConfigError."""
        if self.is_frame_layout():
            return "frame"
        if self.fits_latents(vae_scale):
            return "latent"
        scales = ", ".join(map(str, self.latent_scales())) or "none"
        raise ConfigError(
            f"{self.source} has per-latent targets that fit vae-scale {scales}, not "
            f"{vae_scale}: set --vae-scale to one of those, or give per-frame targets"
        )


def pack_manifest(entries: list[ClipEntry], source: str, cache_root: Path | None = None) -> PackedClips:
    """The pack of these clips: reused when it exists, else validated and built."""
    return pack_manifests([(entries, source)], cache_root)[0]


def pack_manifests(
    splits: list[tuple[list[ClipEntry], str]], cache_root: Path | None = None
) -> list[PackedClips]:
    """Packs for several clip lists, published only once every one of them is valid.

    A bad clip anywhere leaves the cache as it was: nothing half-built stays behind.
    """
    # Absolute: trials in other working folders (Ray's) open the pack by this path.
    cache_root = (Path(cache_root) if cache_root else default_cache_root()).resolve()
    roots = [cache_root / pack_key(entries) for entries, _ in splits]
    made_root = not cache_root.exists()
    building: dict[Path, Path] = {}
    try:
        for (entries, _), root in zip(splits, roots):
            if not (root / "index.json").is_file() and root not in building:
                cache_root.mkdir(parents=True, exist_ok=True)
                building[root] = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_root))
                _write_pack(entries, building[root])
        _check_same_shapes([building.get(r, r) for r in roots], [src for _, src in splits])
        for root, folder in building.items():
            _publish(folder, root)
    except BaseException:
        for folder in building.values():
            shutil.rmtree(folder, ignore_errors=True)
        if made_root and cache_root.exists() and not any(cache_root.iterdir()):
            cache_root.rmdir()
        raise
    return [open_pack(root, source) for root, (_, source) in zip(roots, splits)]


def _check_same_shapes(folders: list[Path], sources: list[str]) -> None:
    shapes = [json.loads((f / "index.json").read_text())["shapes"] for f in folders]
    for folder_shapes, source in zip(shapes[1:], sources[1:]):
        if folder_shapes != shapes[0]:
            raise DataError(
                f"{source} has clips with {_describe(folder_shapes)} but {sources[0]} has "
                f"{_describe(shapes[0])}: training and validation clips must share L, C, K, D"
            )


def _describe(shapes: dict) -> str:
    return "L={layers}, C={channels}, K={tokens}, D={token_dim}".format(**shapes)


def _publish(building: Path, root: Path) -> None:
    try:
        os.rename(building, root)
    except OSError:
        # Another process published the same pack first; its content is identical.
        if not (root / "index.json").is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)


def _write_pack(entries: list[ClipEntry], folder: Path) -> None:
    index = {"format": PACK_FORMAT, "clips": []}
    audio_rows = target_rows = 0
    first_shapes = None
    with open(folder / "audio.f32", "wb") as fa, open(folder / "targets.f32", "wb") as ft:
        for entry in entries:
            audio, target = load_clip(entry)
            shapes = shapes_of(audio, target)
            first_shapes = first_shapes or (entry, shapes)
            check_same_shapes(entry, shapes, *first_shapes)
            check_target_length(entry, audio.shape[0], target.shape[0])
            audio_bytes = audio.numpy().tobytes()
            fa.write(audio_bytes)
            ft.write(target.numpy().tobytes())
            index["clips"].append({
                "name": entry.audio_as_written, "audio": str(entry.audio),
                "target": str(entry.target), "weight": entry.weight,
                "audio_sha256": hashlib.sha256(audio_bytes).hexdigest(),
                "frames": audio.shape[0], "audio_offset": audio_rows,
                "target_rows": target.shape[0], "target_offset": target_rows,
            })
            audio_rows += audio.shape[0]
            target_rows += target.shape[0]
        for f in (fa, ft):
            f.flush()
            os.fsync(f.fileno())
    index["shapes"] = vars(first_shapes[1])
    _check_one_layout(entries, index["clips"])
    (folder / "index.json").write_text(json.dumps(index))


def _check_one_layout(entries: list[ClipEntry], clips: list[dict]) -> None:
    """One manifest, one layout: all per-frame, or all per-latent at a common S."""
    if all(c["frames"] == c["target_rows"] for c in clips):
        return
    longest = max(c["frames"] for c in clips)
    latent = next(i for i, c in enumerate(clips) if c["frames"] != c["target_rows"])
    scales = set(latent_scales(clips[latent]["frames"], clips[latent]["target_rows"], longest))
    for i, c in enumerate(clips):
        fits = set(latent_scales(c["frames"], c["target_rows"], longest))
        if not scales & fits:
            raise DataError(
                f"{entries[i].label}: its target ({c['target_rows']} rows for {c['frames']} "
                f"frames) does not share a layout with {entries[latent].label} (per latent at "
                f"S in {sorted(scales)}): one manifest must use one layout; regenerate one of them"
            )
        scales &= fits


def open_pack(root: Path, source: str = "") -> PackedClips:
    index = json.loads((root / "index.json").read_text())
    clips = index["clips"]
    shapes = ClipShapes(**index["shapes"])

    def column(key, dtype=torch.long):
        return torch.tensor([c[key] for c in clips], dtype=dtype)

    frames, target_rows = column("frames"), column("target_rows")
    return PackedClips(
        root=root,
        source=source or str(root),
        names=[c["name"] for c in clips],
        audio=_map(root / "audio.f32", int(frames.sum()), (shapes.layers, shapes.channels)),
        targets=_map(root / "targets.f32", int(target_rows.sum()), (shapes.tokens, shapes.token_dim)),
        frames=frames,
        audio_offsets=column("audio_offset"),
        target_rows=target_rows,
        target_offsets=column("target_offset"),
        weights=column("weight", torch.float32),
        shapes=shapes,
    )


def clip_identities(pack: PackedClips) -> list[tuple[str, str, str]]:
    """(name, resolved audio path, sha256 of the audio tensor) per clip: what tells a held-out
    clip from a training one. Packs built before the hash was stored hash their mapped rows."""
    clips = json.loads((Path(pack.root) / "index.json").read_text())["clips"]
    found = []
    for c in clips:
        digest = c.get("audio_sha256")
        if digest is None:
            rows = pack.audio[c["audio_offset"]:c["audio_offset"] + c["frames"]]
            digest = hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()
        found.append((c["name"], c["audio"], digest))
    return found


def _map(path: Path, rows: int, row_shape: tuple[int, int]) -> torch.Tensor:
    # MAP_PRIVATE: pages stay shared with the page cache (and other trials) until written,
    # which nothing does.
    count = rows * row_shape[0] * row_shape[1]
    return torch.from_file(str(path), shared=False, size=count, dtype=torch.float32).view(rows, *row_shape)

