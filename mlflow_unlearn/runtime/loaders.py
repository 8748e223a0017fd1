"""Data loaders that are seeded, and that shard across ranks when distributed."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlflow_unlearn.runtime.distributed import is_distributed


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
) -> DataLoader:
    """A DataLoader that shards across ranks with a DistributedSampler when distributed.

    Shuffling is seeded (``seed`` + ``epoch``) so that runs are reproducible.

    >>> [batch.tolist() for batch in make_loader(list(range(5)), batch_size=2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    gen = torch.Generator()
    gen.manual_seed(seed + 7919 * epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)
