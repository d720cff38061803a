"""The straightforward trainer `bench` measures the real one against (never used to train).

It does what a first version of the seed guide's script would: `torch.load` every clip of
the batch at every step, build a window around every video frame and regroup them per
latent the way InfiniteTalk's code does, take the loss as its definition reads, run in
float32, and step an unfused AdamW. `bench` runs it with PyTorch's default memory settings
(no huge pages, glibc's default malloc), as such a script would run; it also times it
with this package's settings, so the two ratios show what those settings are worth.
Its numbers are the baseline of the "fast / straightforward" ratio in docs/performance.md.
"""

from __future__ import annotations

import torch

from ..adapter import AudioProjModel
from ..data.manifest import ClipEntry
from ..windows import WindowSpec, latent_of_frame, n_latents


def per_frame_windows(audio: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """`[F, W, L, C]`: a clamped window centred on every frame the video covers."""
    frames = audio.shape[0]
    video_frames = 1 + (n_latents(frames, spec.vae_scale) - 1) * spec.vae_scale
    offsets = torch.arange(spec.audio_window) - spec.half
    centres = torch.arange(video_frames).unsqueeze(1) + offsets
    return audio[centres.clamp(0, frames - 1)]


def regroup(windows: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """InfiniteTalk's regrouping: `([1, W, L, C], [N-1, W+S-1, L, C])`."""
    s, m = spec.vae_scale, spec.half
    later = windows[1:].reshape(-1, s, *windows.shape[1:])
    first_frame = later[:, 0, : m + 1]
    middle = later[:, 1:-1, m : m + 1].flatten(1, 2)
    last_frame = later[:, -1, m:]
    return windows[:1], torch.cat([first_frame, middle, last_frame], dim=1)


def pad_to(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Repeat the last row up to `rows` rows."""
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])]) if t.shape[0] < rows else t


def literal_l1_loss(pred, targets, positions, mask, weights) -> torch.Tensor:
    """Per example, the mean over valid rows of the mean |prediction - target|; then the
    weighted mean over examples: the definition in DESIGN.md, term by term."""
    rows = torch.arange(pred.shape[0]).unsqueeze(1)
    per_row = (pred[rows, positions] - targets).abs().mean(dim=(-2, -1))
    valid = mask.float()
    per_example = (per_row * valid).sum(dim=1) / valid.sum(dim=1)
    return (per_example * weights).sum() / weights.sum()


class StraightforwardTrainer:
    def __init__(self, model: AudioProjModel, spec: WindowSpec, lr: float, weight_decay: float,
                 grad_clip: float):
        self.model, self.spec, self.grad_clip = model, spec, grad_clip
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                           foreach=False, fused=False)

    def load_batch(self, entries: list[ClipEntry]):
        firsts, latters, targets, positions, masks = [], [], [], [], []
        for entry in entries:
            audio = torch.load(entry.audio, weights_only=True)
            target = torch.load(entry.target, weights_only=True)
            first, latter = regroup(per_frame_windows(audio, self.spec), self.spec)
            firsts.append(first)
            latters.append(latter)
            targets.append(target)
            positions.append(latent_of_frame(audio.shape[0], self.spec.vae_scale))
        n_latter = max(x.shape[0] for x in latters)
        rows = max(t.shape[0] for t in targets)
        masks = [torch.arange(rows) < t.shape[0] for t in targets]
        return (torch.stack(firsts).unsqueeze(1), torch.stack([pad_to(x, n_latter) for x in latters]),
                torch.stack([pad_to(t, rows) for t in targets]),
                torch.stack([pad_to(p, rows) for p in positions]), torch.stack(masks),
                torch.tensor([e.weight for e in entries], dtype=torch.float32))

    def step(self, entries: list[ClipEntry]) -> torch.Tensor:
        first, latter, targets, positions, mask, weights = self.load_batch(entries)
        loss = literal_l1_loss(self.model(first, latter), targets, positions, mask, weights)
        self.optimizer.zero_grad()
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss
