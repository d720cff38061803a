"""Reading one clip's tensors and checking them, alone and against the other clips."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import torch

from ..errors import DataError
from ..windows import n_latents
from .manifest import ClipEntry


@dataclass(frozen=True)
class ClipShapes:
    """What must agree across clips: the embedding's L, C and the tokens' K, D."""

    layers: int
    channels: int
    tokens: int
    token_dim: int


def load_tensor(entry: ClipEntry, key: str) -> torch.Tensor:
    path = getattr(entry, key)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "unsupported" in ln.lower()]
        reason = lines[0] if lines else "refused by weights_only=True"
        raise DataError(
            f"{entry.label}: {key} file {path} is not a plain tensor file ({reason}): "
            "save it with torch.save(tensor, path)"
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a .pt at all
        raise DataError(
            f"{entry.label}: {key} file {path} cannot be read as a tensor "
            f"({type(exc).__name__}): save it with torch.save(tensor, path)"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise DataError(
            f"{entry.label}: {key} file {path} holds a {type(value).__name__}, not a tensor: "
            "save the tensor itself with torch.save(tensor, path)"
        )
    return value


def check_tensor(entry: ClipEntry, key: str, value: torch.Tensor, layout: str) -> torch.Tensor:
    """A float32 copy of a finite rank-3 float tensor with at least one row."""
    path = getattr(entry, key)
    if value.dim() != 3:
        raise DataError(
            f"{entry.label}: {key} {path} has shape {list(value.shape)}, rank {value.dim()}: "
            f"it must be {layout}"
        )
    if not value.is_floating_point():
        raise DataError(
            f"{entry.label}: {key} {path} has dtype {value.dtype}: save it as a float tensor"
        )
    if value.shape[0] == 0 or value.numel() == 0:
        raise DataError(f"{entry.label}: {key} {path} is empty ({list(value.shape)}): drop the clip")
    value = value.to(torch.float32).contiguous()
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise DataError(
            f"{entry.label}: {key} {path} has {bad} NaN or Inf values: regenerate it or drop the clip"
        )
    return value


def load_clip(entry: ClipEntry) -> tuple[torch.Tensor, torch.Tensor]:
    audio = check_tensor(entry, "audio", load_tensor(entry, "audio"), "[T, L, C]")
    target = check_tensor(entry, "target", load_tensor(entry, "target"), "[T, K, D] or [n_lat, K, D]")
    return audio, target


def shapes_of(audio: torch.Tensor, target: torch.Tensor) -> ClipShapes:
    return ClipShapes(audio.shape[1], audio.shape[2], target.shape[1], target.shape[2])


def check_same_shapes(entry: ClipEntry, shapes: ClipShapes, first: ClipEntry, expected: ClipShapes) -> None:
    if (shapes.layers, shapes.channels) != (expected.layers, expected.channels):
        raise DataError(
            f"{entry.label}: audio has L={shapes.layers}, C={shapes.channels} but "
            f"{first.label} has L={expected.layers}, C={expected.channels}: every clip must "
            "come from the same wav2vec2 model and layers"
        )
    if (shapes.tokens, shapes.token_dim) != (expected.tokens, expected.token_dim):
        raise DataError(
            f"{entry.label}: target has K={shapes.tokens}, D={shapes.token_dim} but "
            f"{first.label} has K={expected.tokens}, D={expected.token_dim}: every clip must "
            "come from the same teacher"
        )


def latent_scales(frames: int, target_rows: int, up_to: int | None = None) -> list[int]:
    """The VAE scales 2 <= S <= up_to at which a clip of `frames` has `target_rows` latents.

    Past S = T - 1 every clip has 2 latents (1 if T = 1), so `up_to` = the longest clip's
    length stands for all larger scales too.
    """
    top = max(up_to or frames, 2)
    return [s for s in range(2, top + 1) if n_latents(frames, s) == target_rows]


def check_target_length(entry: ClipEntry, frames: int, target_rows: int) -> None:
    """A target must have one row per frame or one per latent at some S."""
    if target_rows == frames or latent_scales(frames, target_rows):
        return
    examples = ", ".join(f"{n_latents(frames, s)} at S={s}" for s in range(2, min(frames, 5) + 1))
    raise DataError(
        f"{entry.label}: target {entry.target} has {target_rows} rows for {frames} audio "
        f"frames: it must have {frames} (one per video frame) or 1 + ceil({frames - 1}/S) "
        f"(one per latent: {examples or '1'}); regenerate the target for this clip"
    )
