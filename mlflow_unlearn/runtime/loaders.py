"""Data loaders that are seeded, and that shard across ranks when distributed."""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

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
    tensors = in_memory_tensors(dataset)
    if tensors is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)
    # Samples held as tensors: one indexing per batch instead of one call per sample and a collate (a fifth of
    # the time of a small model's epoch). Same sampler, same generator: the batches are the ones above.
    order = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    return DataLoader(_Rows(tensors), batch_size=None, sampler=BatchSampler(order, batch_size, drop_last),
                      generator=gen)  # the loader draws its base seed from ``gen`` before the sampler, as above


def in_memory_tensors(dataset: Dataset) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a ``TensorDataset`` or of a dataset with tensor ``x`` and ``y`` of one length whose samples
    are ``(x[i], y[i])`` (a :class:`~mlflow_unlearn.data.SampleSet`); ``None`` for any other dataset."""
    if type(dataset) is torch.utils.data.TensorDataset:
        return tuple(dataset.tensors)
    from mlflow_unlearn.data.samples import SampleSet

    if isinstance(dataset, SampleSet) and type(dataset).__getitem__ is SampleSet.__getitem__:
        return dataset.x, dataset.y
    return None


class _Rows(Dataset):
    """Rows of tensors fetched by a list of indices at once (a sampler of batches feeds it)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)
