"""Batches gathered straight from a pack's mapped arrays.

One gather builds a batch's adapter inputs (`windows.window_index`), one more its targets.
Clips shorter than the batch's longest are padded by repeating their last frame or row;
the mask keeps that padding out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..windows import WindowIndex, WindowSpec, latent_of_frame, split_inputs, window_index
from .pack import PackedClips


@dataclass
class Batch:
    first: torch.Tensor  # [B, 1, W, L, C]
    latter: torch.Tensor  # [B, N-1, W+S-1, L, C]
    targets: torch.Tensor  # [B, P, K, D]
    positions: torch.Tensor  # [B, P] latent compared with each target row
    mask: torch.Tensor  # [B, P] false on padding
    weights: torch.Tensor  # [B]

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return self._map(lambda t: t.pin_memory())

    @property
    def size(self) -> int:
        return self.weights.shape[0]


@dataclass(frozen=True)
class TargetIndex:
    rows: torch.Tensor  # [B, P] rows of the packed targets
    positions: torch.Tensor  # [B, P]
    mask: torch.Tensor  # [B, P]


def target_index(pack: PackedClips, clips: torch.Tensor, layout: str, vae_scale: int) -> TargetIndex:
    """Which target row, compared with which latent, for every row of a padded batch."""
    count = pack.target_rows[clips]
    p = torch.arange(int(count.max())).unsqueeze(0)
    mask = p < count.unsqueeze(1)
    within = p.minimum(count.unsqueeze(1) - 1)
    rows = pack.target_offsets[clips].unsqueeze(1) + within
    positions = latent_of_frame(within, vae_scale) if layout == "frame" else within
    return TargetIndex(rows, positions, mask)


class BatchGatherer(torch.utils.data.Dataset):
    """Map-style dataset whose keys are lists of clip numbers and whose items are Batches.

    Used with `DataLoader(batch_size=None, sampler=<batch sampler>)`, so worker processes
    (when asked for) gather whole batches from the shared mapping.
    """

    def __init__(self, pack: PackedClips, spec: WindowSpec, layout: str):
        self.pack, self.spec, self.layout = pack, spec, layout

    def __len__(self) -> int:
        return len(self.pack)

    def window_index(self, clips: torch.Tensor) -> WindowIndex:
        return window_index(self.pack.audio_offsets[clips], self.pack.frames[clips], self.spec)

    def __getitem__(self, clip_list) -> Batch:
        clips = torch.as_tensor(clip_list, dtype=torch.long)
        pack = self.pack
        index = self.window_index(clips)
        frame_shape = pack.audio.shape[1:]
        gathered = pack.take_audio(index.flat()).view(-1, frame_shape.numel())
        first, latter = split_inputs(gathered, index, frame_shape)
        tgt = target_index(pack, clips, self.layout, self.spec.vae_scale)
        targets = pack.take_targets(tgt.rows.reshape(-1))
        return Batch(
            first=first,
            latter=latter,
            targets=targets.view(*tgt.rows.shape, *targets.shape[1:]),
            positions=tgt.positions,
            mask=tgt.mask,
            weights=pack.weights[clips],
        )
