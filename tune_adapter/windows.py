"""Frame embeddings -> adapter inputs, as index tables; latent <-> frame maps.

InfiniteTalk builds a window of W frames around every video frame (`wan/multitalk.py`),
then regroups them per latent (`WanModel.forward`): latent 0 keeps frame 0's window;
latent k >= 1 takes its first frame's left half-window and centre, the centres of its
middle frames, and its last frame's centre and right half-window. That regrouping is the
contiguous run of frames `1+(k-1)S-m ... kS+m` (m = W // 2), clamped to the clip. So an
adapter input is one gather with a precomputed index table; no per-frame window is ever
materialised. docs/adapter.md works through the tables with examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import option_problem
from .errors import ConfigError


@dataclass(frozen=True)
class WindowSpec:
    audio_window: int = 5  # W, odd
    vae_scale: int = 4  # S, VAE temporal downsampling

    def __post_init__(self):
        check_window(self.audio_window, self.vae_scale)

    @property
    def half(self) -> int:
        return self.audio_window // 2

    @property
    def latter_width(self) -> int:
        return self.audio_window + self.vae_scale - 1


def check_window(audio_window: int, vae_scale: int,
                 flags: tuple[str, str] = ("--audio-window", "--vae-scale")) -> None:
    """W and S by TrainConfig's rules; `flags` name them in the error (synth: the teacher's)."""
    for flag, name, value in zip(flags, ("audio_window", "vae_scale"), (audio_window, vae_scale)):
        problem = option_problem(name, value)
        if problem:
            raise ConfigError(f"{flag} is {value!r}: {problem}")


def n_latents(frames: int, vae_scale: int) -> int:
    """Latent frames of a clip of `frames` video frames: 1 + ceil((T - 1) / S)."""
    return 1 + -(-(frames - 1) // vae_scale)


def latents_of_lengths(frames: torch.Tensor, vae_scale: int) -> torch.Tensor:
    """`n_latents` of every entry of an integer tensor."""
    return 1 + torch.div(frames - 1 + vae_scale - 1, vae_scale, rounding_mode="floor")


def latent_of_frame(frames: int | torch.Tensor, vae_scale: int) -> torch.Tensor:
    """Latent of each video frame t (0 for t = 0, else 1 + (t-1) // S).

    `frames` is a clip length (gives `[T]`) or a tensor of frame numbers (same shape out).
    """
    t = torch.arange(frames) if isinstance(frames, int) else frames
    return torch.where(
        t > 0, 1 + torch.div(t - 1, vae_scale, rounding_mode="floor"), torch.zeros_like(t)
    )


def first_window_frames(spec: WindowSpec) -> torch.Tensor:
    """Frame offsets of latent 0's window, before clamping: `[W]`."""
    return torch.arange(spec.audio_window) - spec.half


def latter_window_frames(n_latter: int, spec: WindowSpec) -> torch.Tensor:
    """Frames of latents 1..n_latter before clamping: `[n_latter, W+S-1]`."""
    k = torch.arange(1, n_latter + 1).unsqueeze(1)
    return 1 + (k - 1) * spec.vae_scale - spec.half + torch.arange(spec.latter_width)


@dataclass(frozen=True)
class WindowIndex:
    """Rows of the packed frame array that make one batch's adapter inputs."""

    first: torch.Tensor  # [B, 1, W]
    latter: torch.Tensor  # [B, N-1, W+S-1]; latents past a clip's end repeat its last frame
    n_latents: torch.Tensor  # [B] valid latents per clip

    def flat(self) -> torch.Tensor:
        """Both tables as one index, so a batch is a single gather."""
        return torch.cat([self.first.reshape(-1), self.latter.reshape(-1)])


def window_index(offsets: torch.Tensor, lengths: torch.Tensor, spec: WindowSpec) -> WindowIndex:
    """Index tables for clips stored back to back: clip b is rows offsets[b] ... +lengths[b].

    Every index is clamped to its own clip, exactly as InfiniteTalk clamps to `[0, T-1]`.
    """
    n_lat = latents_of_lengths(lengths, spec.vae_scale)
    n_latter = int(n_lat.max()) - 1
    last = (lengths - 1).view(-1, 1, 1)
    base = offsets.view(-1, 1, 1)
    first = first_window_frames(spec).view(1, 1, -1)
    latter = latter_window_frames(n_latter, spec).unsqueeze(0)
    return WindowIndex(
        first=base + first.clamp(min=0).minimum(last),
        latter=base + latter.clamp(min=0).minimum(last),
        n_latents=n_lat,
    )


def clip_inputs(audio: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter inputs of one clip `[T, L, C]`: `([1, 1, W, L, C], [1, N-1, W+S-1, L, C])`."""
    frames = audio.shape[0]
    index = window_index(torch.zeros(1, dtype=torch.long), torch.tensor([frames]), spec)
    gathered = audio.reshape(frames, -1).index_select(0, index.flat())
    return split_inputs(gathered, index, audio.shape[1:])


def split_inputs(
    gathered: torch.Tensor, index: WindowIndex, frame_shape: torch.Size | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of one gathered block as the adapter's `first` and `latter` inputs."""
    n_first = index.first.numel()
    first = gathered[:n_first].view(*index.first.shape, *frame_shape)
    latter = gathered[n_first:].view(*index.latter.shape, *frame_shape)
    return first, latter
