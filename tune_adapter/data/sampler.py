"""Seeded batch samplers: every clip exactly once per epoch.

Batches are padded to their longest clip, so mixing a 20-frame clip with an 80-frame one
wastes most of the short clip's compute. The bucketing sampler shuffles, then sorts by
length inside pools of many batches, so batches hold clips of similar length while their
order and makeup still change every epoch.
"""

from __future__ import annotations

import torch

POOL_BATCHES = 32


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class BatchSampler(torch.utils.data.Sampler):
    """Yields lists of clip numbers; `set_epoch` changes the order, seed fixes it."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int = 0,
                 bucket: bool = True, shuffle: bool = True):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = torch.arange(n)
            if self.bucket:
                order = torch.argsort(self.lengths, stable=True)
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        gen = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen)
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
        return iter(self.batches())


def padded_fraction(batches: list[list[int]], lengths: torch.Tensor) -> float:
    """Share of a padded batch's rows that are padding, over a whole epoch."""
    real = padded = 0
    for batch in batches:
        sizes = lengths[batch]
        real += int(sizes.sum())
        padded += int(sizes.max()) * len(batch)
    return 1 - real / padded if padded else 0.0
