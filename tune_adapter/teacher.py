"""The teacher: InfiniteTalk's released adapter, read from its weights file, run per clip."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from .adapter import AdapterDims, AudioProjModel, dims_from_state_dict
from .errors import ConfigError
from .windows import WindowSpec, clip_inputs, latent_of_frame

PREFIX = "audio_proj."
LAYOUTS = ("latent", "frame")


def read_adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Only the `audio_proj.*` tensors of a (many-GB) safetensors file, un-prefixed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--teacher {path} does not exist: give InfiniteTalk's weights file "
            "(weights/InfiniteTalk/single/infinitetalk.safetensors)"
        )
    try:
        with safe_open(path, framework="pt") as f:
            names = [k for k in f.keys() if k.startswith(PREFIX)]
            tensors = {k.removeprefix(PREFIX): f.get_tensor(k) for k in names}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ConfigError(f"--teacher {path} is not a readable safetensors file ({exc})") from None
    if not tensors:
        raise ConfigError(f"--teacher {path} has no {PREFIX}* tensors: is it InfiniteTalk's weights file?")
    return tensors


def load_teacher(path: Path, tensors: dict[str, torch.Tensor], layers: int, channels: int,
                 device: torch.device) -> AudioProjModel:
    """The teacher adapter in float32 from `read_adapter_tensors(path)`; W, S, I, K, D and
    the norm come from its shapes, L and C from the wav2vec2 model."""
    try:
        dims = dims_from_state_dict(tensors, layers=layers, channels=channels)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"--teacher {path}: its {PREFIX}* tensors are not an AudioProjModel ({exc})") from None
    model = AudioProjModel(dims)
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"--teacher {path}: {PREFIX}* tensors do not fit {dims} ({exc})") from None
    return model.to(device).eval()


def describe(dims: AdapterDims) -> str:
    return (f"W={dims.audio_window} S={dims.vae_scale} L={dims.layers} C={dims.channels} "
            f"I={dims.intermediate_dim} K={dims.context_tokens} D={dims.output_dim} "
            f"norm={'on' if dims.norm_output_audio else 'off'}")


@torch.no_grad()
def teacher_tokens(model: AudioProjModel, audio: torch.Tensor, layout: str) -> torch.Tensor:
    """Tokens for one clip `[T, L, C]`: `[n_lat, K, D]` (latent) or `[T, K, D]` (frame)."""
    spec = WindowSpec(model.dims.audio_window, model.dims.vae_scale)
    device = next(model.parameters()).device
    first, latter = clip_inputs(audio.to(device), spec)
    tokens = model(first, latter).squeeze(0).float().cpu()
    if layout == "frame":
        return tokens[latent_of_frame(audio.shape[0], spec.vae_scale)]
    return tokens
