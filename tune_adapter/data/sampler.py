"""Seeded batch samplers: every clip exactly once per epoch.

Batches are padded to their longest clip, so mixing a 20-frame clip with an 80-frame one
wastes most of the short clip's compute. The bucketing sampler shuffles, then sorts by
length inside pools of many batches, so batches hold clips of similar length while their
order and makeup still change every epoch.

A pack of several shards is read in an order with locality when `window` is set: the shards
in a random order, the same for every trial of an epoch (concurrent trials then read the
same shards at about the same time, once, through the page cache), and each trial's clips
shuffled within `window` shards at a time, the next window's shards read ahead and a finished
window's released. A pack of at most `window` shards is shuffled whole, exactly as without a
window.
"""

from __future__ import annotations

from typing import Callable

import torch

POOL_BATCHES = 32


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class BatchSampler(torch.utils.data.Sampler):
    """Yields lists of clip numbers; `set_epoch` changes the order, seed fixes it."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int = 0,
                 bucket: bool = True, shuffle: bool = True, shards: torch.Tensor | None = None,
                 window: int = 0, read_ahead: Callable[[list[int]], None] | None = None,
                 release: Callable[[list[int]], None] | None = None):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket
        self.shuffle = shuffle
        self.shards = shards  # [clips] the shard each clip is stored in
        self.window = window
        self.read_ahead = read_ahead
        self.release = release
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(-(-len(clips) // self.batch_size) for _, clips in self.windows())

    def windowed(self) -> bool:
        return (self.shuffle and self.window > 0 and self.shards is not None
                and len(self.shards) > 0 and int(self.shards.max()) + 1 > self.window)

    def windows(self) -> list[tuple[list[int], torch.Tensor]]:
        """(shards, their clips) read together: one window of every clip unless windowed."""
        if not self.windowed():
            return [([], torch.arange(len(self.lengths)))]
        order = torch.randperm(int(self.shards.max()) + 1, generator=torch.Generator().manual_seed(self.epoch))
        groups = [order[i:i + self.window] for i in range(0, len(order), self.window)]
        return [(g.tolist(), torch.isin(self.shards, g).nonzero().squeeze(1)) for g in groups]

    def batches(self) -> list[list[int]]:
        return [batch for _, batches in self.windowed_batches() for batch in batches]

    def windowed_batches(self) -> list[tuple[list[int], list[list[int]]]]:
        if not self.shuffle:
            order = torch.arange(len(self.lengths))
            if self.bucket:
                order = torch.argsort(self.lengths, stable=True)
            return [([], [chunk.tolist() for chunk in order.split(self.batch_size)])]
        gen = epoch_generator(self.seed, self.epoch)
        return [(shards, self.shuffled(clips, gen)) for shards, clips in self.windows()]

    def shuffled(self, clips: torch.Tensor, gen: torch.Generator) -> list[list[int]]:
        order = clips[torch.randperm(len(clips), generator=gen)]
        if self.bucket:
            pool = self.batch_size * POOL_BATCHES
            order = torch.cat([
                chunk[torch.argsort(self.lengths[chunk], stable=True)]
                for chunk in order.split(pool)
            ])
        batches = list(order.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i].tolist() for i in shuffled]

    def __iter__(self):
        windows = self.windowed_batches()
        if self.read_ahead is not None and windows[0][0]:
            self.read_ahead(windows[0][0])
        for i, (shards, batches) in enumerate(windows):
            if self.read_ahead is not None and i + 1 < len(windows):
                self.read_ahead(windows[i + 1][0])  # the next window's shards, while this one trains
            yield from batches
            if self.release is not None and shards:
                self.release(shards)


def padded_fraction(batches: list[list[int]], lengths: torch.Tensor) -> float:
    """Share of a padded batch's rows that are padding, over a whole epoch."""
    real = padded = 0
    for batch in batches:
        sizes = lengths[batch]
        real += int(sizes.sum())
        padded += int(sizes.max()) * len(batch)
    return 1 - real / padded if padded else 0.0
