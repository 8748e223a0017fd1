"""Data loaders that are seeded, shard across ranks when distributed, and stream: one batch in memory at a time.

Two ways to read a batch, chosen per dataset:

* **whole batches**, for data held in memory or memory-mapped (a ``TensorDataset``, a
  :class:`~mlflow_unlearn.data.SampleSet` over tensors or arrays, and ``Subset``/``ConcatDataset``/relabelling
  wrappers of those): one indexing per batch in the main process (:func:`batch_reader`). Measured faster than
  PyTorch's per-sample reads and collate: an epoch of mnist5k's training split is read in 0.03-0.07 s of CPU
  instead of 0.07-0.11 s, and an ``mlp`` epoch on it took 0.29-0.35 s instead of 0.38-0.40 s (one thread,
  2-core EPYC);
* **per sample, in worker processes**, for data that is decoded when read (image files, the user's own ``Dataset``
  code): a ``DataLoader`` with :func:`data_workers` processes, so that decoding overlaps the model's work.

Any other dataset is read per sample in the main process, as PyTorch's default loader does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from mlflow_unlearn.runtime.distributed import is_distributed

#: Environment variable that sets the number of DataLoader worker processes for decoded data (0: decode in the
#: main process).
DATA_WORKERS_ENV = "MLFLOW_UNLEARN_DATA_WORKERS"
#: At most this many worker processes by default.
MAX_DATA_WORKERS = 8

BatchRead = Callable[[np.ndarray], tuple[torch.Tensor, ...]]


def data_workers() -> int:
    """DataLoader worker processes for data decoded when read: ``MLFLOW_UNLEARN_DATA_WORKERS`` when set, else one
    fewer than the CPUs this process may use, at most :data:`MAX_DATA_WORKERS` (1 on a 2-core machine, where one
    worker decodes while the main process computes; 8 on a 16-core GPU host). At least 1.

    >>> os.environ[DATA_WORKERS_ENV] = "0"; data_workers()
    0
    >>> del os.environ[DATA_WORKERS_ENV]
    """
    text = os.environ.get(DATA_WORKERS_ENV, "").strip()
    if text:
        if not text.isdigit():
            raise ValueError(f"Expected {DATA_WORKERS_ENV} to be a non-negative int but got {text!r}")
        return int(text)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DATA_WORKERS, cpus - 1))


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A DataLoader that shards across ranks with a DistributedSampler when distributed, and streams.

    Shuffling is seeded (``seed`` + ``epoch``) so that runs are reproducible; the batches are the same whichever
    way they are read (whole batches or per sample, see the module docstring). For a CUDA ``device`` the batches
    come in pinned (page-locked) memory, so that :func:`~mlflow_unlearn.runtime.to_device`'s non-blocking copy
    overlaps the GPU's work.

    >>> [batch.tolist() for batch in make_loader(list(range(5)), batch_size=2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    reader = batch_reader(dataset)
    pin = pins_memory(device)
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        if reader is not None:
            return DataLoader(_Rows(dataset, reader), batch_size=None,
                              sampler=BatchSampler(sampler, batch_size, drop_last), pin_memory=pin)
        return StreamingLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, pin_memory=pin,
                               **_worker_options(dataset, len(sampler), batch_size))
    gen = torch.Generator()
    gen.manual_seed(seed + 7919 * epoch)
    if reader is None:
        return StreamingLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last,
                               pin_memory=pin, **_worker_options(dataset, len(dataset), batch_size))
    # Whole batches: one indexing per batch instead of one call per sample and a collate (a fifth of the time of a
    # small model's epoch). Same sampler, same generator: the batches are the ones above.
    order = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    return DataLoader(_Rows(dataset, reader), batch_size=None, sampler=BatchSampler(order, batch_size, drop_last),
                      generator=gen, pin_memory=pin)  # the loader draws its base seed from ``gen`` before the sampler


def inference_loader(dataset: Dataset, *, batch_size: int, device: torch.device | str | None = None
                     ) -> Iterable[tuple]:
    """Every sample of ``dataset`` once, in order, in batches: never sharded (each rank sees all samples), so that
    row ``i`` of what a pass computes belongs to sample ``i``. Pinned memory for a CUDA ``device``, as in
    :func:`make_loader`.

    >>> [x.tolist() for x, in inference_loader(torch.utils.data.TensorDataset(torch.arange(5)), batch_size=2)]
    [[0, 1], [2, 3], [4]]
    """
    reader = batch_reader(dataset)
    pin = pins_memory(device)
    if reader is not None:
        batches = (reader(np.arange(start, min(start + batch_size, len(dataset))))
                   for start in range(0, len(dataset), batch_size))
        return (tuple(t.pin_memory() for t in batch) for batch in batches) if pin else batches
    return StreamingLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=pin,
                           **_worker_options(dataset, len(dataset), batch_size))


def pins_memory(device: torch.device | str | None) -> bool:
    """Whether batches for ``device`` are worth page-locked memory: on CUDA only (and where CUDA is available).

    >>> pins_memory("cpu"), pins_memory(None)
    (False, False)
    """
    return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


def batch_reader(dataset: Dataset) -> BatchRead | None:
    """A function that reads the samples at an array of positions of ``dataset`` as one tuple of stacked tensors, for
    datasets held in memory or memory-mapped; None for any other (read those per sample).

    Known: ``TensorDataset``, ``Subset`` and ``ConcatDataset`` of such datasets, and any dataset with a
    ``batch_reader()`` method (a :class:`~mlflow_unlearn.data.SampleSet`, the methods' relabelling wrappers) that
    returns one.

    >>> read = batch_reader(torch.utils.data.Subset(torch.utils.data.TensorDataset(torch.arange(10) * 2), [5, 1]))
    >>> read(np.array([1, 0]))[0].tolist()
    [2, 10]
    """
    if type(dataset) is torch.utils.data.TensorDataset:
        tensors = dataset.tensors
        return lambda index: tuple(t[torch.from_numpy(np.asarray(index, dtype=np.int64))] for t in tensors)
    if type(dataset) is torch.utils.data.Subset:
        inner = batch_reader(dataset.dataset)
        if inner is None:
            return None
        indices = np.asarray(dataset.indices, dtype=np.int64)
        return lambda index: inner(indices[np.asarray(index, dtype=np.int64)])
    if type(dataset) is torch.utils.data.ConcatDataset:
        readers = [batch_reader(part) for part in dataset.datasets]
        if any(r is None for r in readers):
            return None
        return _concat_reader(readers, np.asarray(dataset.cumulative_sizes, dtype=np.int64))
    method = getattr(dataset, "batch_reader", None)
    return method() if callable(method) else None


def _concat_reader(readers: list[BatchRead], ends: np.ndarray) -> BatchRead:
    starts = np.concatenate([[0], ends[:-1]])

    def read(index: np.ndarray) -> tuple[torch.Tensor, ...]:
        index = np.asarray(index, dtype=np.int64)
        part = np.searchsorted(ends, index, side="right")
        pieces, order = [], []
        for p in np.unique(part).tolist():
            where = np.nonzero(part == p)[0]
            pieces.append(readers[p](index[where] - starts[p]))
            order.append(where)
        if len(pieces) == 1:
            return pieces[0]
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return tuple(torch.cat([piece[k] for piece in pieces])[back] for k in range(len(pieces[0])))

    return read


def reads_files(dataset: Dataset) -> bool:
    """Whether reading ``dataset`` decodes files or runs the user's dataset code (some part of it, through ``Subset``,
    ``ConcatDataset`` and wrappers that expose ``parts()``)."""
    if getattr(dataset, "reads_files", False) is True:
        return True
    if isinstance(dataset, torch.utils.data.Subset):
        return reads_files(dataset.dataset)
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return any(reads_files(part) for part in dataset.datasets)
    parts = getattr(dataset, "parts", None)
    return callable(parts) and any(reads_files(part) for part in parts())


#: Read a dataset in the main process when reading all of it is expected to take less than this (seconds): starting
#: a worker process took ~0.1 s here (2-core EPYC), while 200 224-px JPEGs took 0.8 s with one worker and 3.9 s
#: without (the main process's collate competes with the model for its intra-op threads).
WORKER_WORTH_S = 0.25


def _worker_options(dataset: Dataset, samples: int, batch_size: int) -> dict:
    """Worker processes for a dataset decoded when read, worth more than one batch and more than
    :data:`WORKER_WORTH_S` of reading (timed on its first sample); none otherwise."""
    workers = data_workers() if reads_files(dataset) and samples > batch_size else 0
    if workers:
        start = time.perf_counter()
        dataset[0]  # noqa: B018 - timed: one sample's read
        if samples * (time.perf_counter() - start) < WORKER_WORTH_S:
            workers = 0
    if workers == 0:
        return {}
    # fork: the workers share the parent's memory (the sample bookkeeping, the user's modules) without pickling it
    context = "fork" if sys.platform.startswith("linux") else None
    return {"num_workers": workers, "multiprocessing_context": context, "prefetch_factor": 2}


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset`` as an int64 CPU tensor, from per-sample bookkeeping where it is kept (a
    :class:`~mlflow_unlearn.data.SampleSet`'s ``y``, a ``TensorDataset``'s second tensor, a relabelling wrapper's
    ``labels`` tensor, through ``Subset`` and ``ConcatDataset``), else from one pass over the samples.

    >>> dataset_labels(torch.utils.data.Subset(torch.utils.data.TensorDataset(torch.zeros(3), torch.tensor([4, 5, 6])),
    ...                                        [2, 0])).tolist()
    [6, 4]
    """
    if isinstance(getattr(dataset, "y", None), torch.Tensor):
        return dataset.y.long().cpu()
    if type(dataset) is torch.utils.data.TensorDataset and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long().cpu()
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return torch.cat([dataset_labels(part) for part in dataset.datasets])
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == len(dataset):
        return labels.long().cpu()
    if len(dataset) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.as_tensor(batch[1]).reshape(-1) for batch in inference_loader(dataset, batch_size=256)]
                     ).long()


class StreamingLoader(DataLoader):
    """A ``DataLoader`` whose errors read as one line: an error raised in a worker process comes back as the worker's
    own exception and message (PyTorch re-raises it with the worker's traceback in the message), and samples of
    different shapes in one batch as a ``ValueError`` that says so."""

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - re-raised, reworded
                raise _one_line(exc) from None
            yield batch


def _one_line(exc: Exception) -> Exception:
    text = str(exc)
    # default_collate stacks into storage sized by the first sample: a worker fails on the resize instead
    unequal = ("stack expects each tensor to be equal size" in text
               or ("Trying to resize storage that is not resizable" in text and "collate" in text))
    if unequal:
        found = text.rfind("stack expects")
        shapes = f" ({text[found:].splitlines()[0]})" if found >= 0 else ""
        return ValueError(f"The samples of one batch have different shapes{shapes}; every sample of a data source "
                          "must have one shape: resize them (the options size= and crop=) or fix the dataset's "
                          "transform")
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[1] if ": " in last else last
        try:
            return type(exc)(message)
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments
            return exc
    return exc


class _Rows(Dataset):
    """Rows of a dataset fetched by a list of indices at once (a sampler of batches feeds it)."""

    def __init__(self, dataset: Dataset, reader: BatchRead) -> None:
        self.dataset, self.reader = dataset, reader

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return self.reader(np.asarray(indices, dtype=np.int64))
