"""InfiniteTalk's AudioProjModel: same layers, same state-dict keys, same arithmetic.

Inputs follow InfiniteTalk's `WanModel.forward`: `first` is `[B, 1, W, L, C]` (the window
of latent 0) and `latter` is `[B, N-1, W+S-1, L, C]` (one regrouped window per later
latent); the output is `[B, N, K, D]`. See `windows.py` for how the inputs are gathered
and docs/adapter.md for the whole computation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdapterDims:
    """Every number that fixes the adapter's shapes (InfiniteTalk's defaults)."""

    audio_window: int = 5  # W
    vae_scale: int = 4  # S
    layers: int = 12  # L, wav2vec2 hidden states stacked per frame
    channels: int = 768  # C
    intermediate_dim: int = 512  # I
    context_tokens: int = 32  # K
    output_dim: int = 768  # D
    norm_output_audio: bool = True

    @property
    def first_width(self) -> int:
        return self.audio_window

    @property
    def latter_width(self) -> int:
        return self.audio_window + self.vae_scale - 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "AdapterDims":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names})


class AudioProjModel(nn.Module):
    """The audio adapter; `state_dict()` keys match InfiniteTalk's `audio_proj.*` tensors."""

    def __init__(self, dims: AdapterDims = AdapterDims()):
        super().__init__()
        self.dims = dims
        frame_dim = dims.layers * dims.channels
        self.proj1 = nn.Linear(dims.first_width * frame_dim, dims.intermediate_dim)
        self.proj1_vf = nn.Linear(dims.latter_width * frame_dim, dims.intermediate_dim)
        self.proj2 = nn.Linear(dims.intermediate_dim, dims.intermediate_dim)
        self.proj3 = nn.Linear(dims.intermediate_dim, dims.context_tokens * dims.output_dim)
        self.norm = nn.LayerNorm(dims.output_dim) if dims.norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        batch, n_first = first.shape[:2]
        n_latter = latter.shape[1]
        inter = self.dims.intermediate_dim
        # (w, l, c) row-major flattening, exactly InfiniteTalk's `.view`.
        h_first = torch.relu(self.proj1(first.reshape(batch * n_first, self.proj1.in_features)))
        h_latter = torch.relu(
            self.proj1_vf(latter.reshape(batch * n_latter, self.proj1_vf.in_features))
        )
        h = torch.cat(
            [h_first.view(batch, n_first, inter), h_latter.view(batch, n_latter, inter)], dim=1
        )
        h = torch.relu(self.proj2(h))
        tokens = self.proj3(h).view(
            batch, n_first + n_latter, self.dims.context_tokens, self.dims.output_dim
        )
        return self.normalize(tokens)

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        # InfiniteTalk runs the norm under autocast(float32): LayerNorm in full precision.
        if isinstance(self.norm, nn.Identity):
            return tokens
        with torch.autocast(tokens.device.type, enabled=False):
            return self.norm(tokens.float())

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def dims_from_state_dict(
    state: dict[str, torch.Tensor],
    prefix: str = "",
    layers: int = 12,
    channels: int = 768,
    output_dim: int | None = None,
) -> AdapterDims:
    """Infer W, S, I, K, D and the norm from an adapter's tensor shapes.

    The input widths are W*L*C and (W+S-1)*L*C, so L and C (the wav2vec2 model's) must be
    known; D is the norm's width, or must be given when the adapter has no norm.
    """
    inter, first_in = state[f"{prefix}proj1.weight"].shape
    latter_in = state[f"{prefix}proj1_vf.weight"].shape[1]
    kd = state[f"{prefix}proj3.weight"].shape[0]
    norm_key = f"{prefix}norm.weight"
    has_norm = norm_key in state
    out_dim = state[norm_key].shape[0] if has_norm else (output_dim or 768)
    frame_dim = layers * channels
    if first_in % frame_dim or latter_in % frame_dim or kd % out_dim:
        raise ValueError(
            f"adapter input widths {first_in}, {latter_in} and output {kd} do not fit "
            f"L={layers}, C={channels}, D={out_dim}"
        )
    window = first_in // frame_dim
    return AdapterDims(
        audio_window=window,
        vae_scale=latter_in // frame_dim - window + 1,
        layers=layers,
        channels=channels,
        intermediate_dim=inter,
        context_tokens=kd // out_dim,
        output_dim=out_dim,
        norm_output_audio=has_norm,
    )
