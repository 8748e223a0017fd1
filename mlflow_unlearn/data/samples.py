"""Sample sets in which every sample carries a stable sample ID, read from their source one batch at a time.

Deletion requests name sample IDs, so IDs travel with the samples through splitting and subsetting.
A :class:`SampleSet` is a ``torch.utils.data.Dataset`` yielding ``(x, y)`` so that any PyTorch code
(and every unlearning method) can consume it; the IDs stay on the side. It holds per-sample bookkeeping only
(positions in the source's :class:`~mlflow_unlearn.data.inputs.SampleInputs`, labels, IDs): inputs are read when
they are used.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlflow_unlearn.data.inputs import SampleInputs


def _as_id_array(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind in ("i", "u"):
        return arr.astype(np.int64)
    if arr.dtype.kind in ("U", "S", "O"):
        return arr.astype(str)
    raise ValueError(f"Expected sample IDs to be ints or strings but got dtype {arr.dtype}")


def canonical_id(value: Any) -> str:
    """The canonical text form of one sample ID: decimal digits for ints, the string itself for strings.

    >>> canonical_id(7), canonical_id(np.int64(7)), canonical_id("cat/001.png")
    ('7', '7', 'cat/001.png')
    """
    return str(int(value)) if isinstance(value, (int, np.integer)) else str(value)


def ids_digest(ids: Any, *, salt: str = "", key: bytes | None = None) -> str:
    """SHA-256 (or, with ``key``, HMAC-SHA256) hex digest of a set of sample IDs, independent of their order.

    The IDs are put in :func:`canonical_id` form, sorted by their UTF-8 bytes and hashed after a fixed
    domain tag and the salt, each item length-prefixed so that no two different ID lists (or salts)
    hash the same input. Int ``7`` and string ``"7"`` therefore digest alike: the digest names a set of
    IDs, whatever dtype the dataset gives them.

    Args:
        ids: sample IDs (ints or strings).
        salt: optional string mixed in first (public: it changes the digest but protects nothing).
        key: a secret key: the digest becomes an HMAC-SHA256, which nobody without the key can check against
            guessed ID lists.

    Returns:
        64 hex characters.

    >>> ids_digest([3, 1, 2]) == ids_digest(np.array([1, 2, 3])) != ids_digest([1, 2, 3], key=b"k")
    True
    """
    encoded = sorted(canonical_id(v).encode() for v in np.asarray(ids).reshape(-1).tolist())
    h = hmac.new(key, b"mlflow-unlearn/sample-ids/v1", hashlib.sha256) if key else hashlib.sha256(
        b"mlflow-unlearn/sample-ids/v1")
    for item in (salt.encode(), *encoded):
        h.update(len(item).to_bytes(8, "big") + item)
    return h.hexdigest()


def seeded_order(ids: np.ndarray, *, seed: int, purpose: str) -> np.ndarray:
    """A pseudo-random permutation of positions, fixed by ``seed``, ``purpose`` and the IDs themselves.

    Each sample's rank comes from SHA-256 of ``purpose``, ``seed`` and its canonical ID, so a sample's place
    does not depend on the order in which the source lists the samples nor on the NumPy version, and
    adding samples does not reshuffle the others. ``purpose`` keeps orders made for different uses
    (the train/test split, a random forget set) independent.

    >>> order = seeded_order(np.array([10, 11, 12]), seed=0, purpose="doc")
    >>> sorted(order.tolist())
    [0, 1, 2]
    """
    prefix = f"{purpose}\0{seed}\0".encode()
    keys = np.fromiter(
        (int.from_bytes(hashlib.sha256(prefix + canonical_id(v).encode()).digest()[:8], "big") for v in ids.tolist()),
        dtype=np.uint64, count=len(ids),
    )
    return np.argsort(keys, kind="stable")


@dataclass(frozen=True, eq=False)
class SampleSet(Dataset):
    """A view of some samples of one source: their positions in its inputs, their labels and their stable IDs.

    Only the per-sample bookkeeping (positions, labels, IDs) is held; an input is read from ``inputs`` when the sample
    is (``data[i]`` is ``(input, label)``), so a sample set of any size costs the memory of that bookkeeping. Use
    :func:`mlflow_unlearn.runtime.make_loader` (or any ``DataLoader``) to go through it in batches.

    Args:
        inputs: every input of the source (a :class:`~mlflow_unlearn.data.inputs.SampleInputs`; a tensor of
            ``N`` samples is wrapped as one). Inputs are read as float32 (``C x H x W`` or ``F``) or, for integer
            inputs, int64 with their values untouched (token IDs for a model with an ``nn.Embedding`` first).
        y: integer class labels of this set's samples (int64, ``n``).
        ids: one stable ID per sample (ints or strings), unique.
        num_classes: number of classes of the task (not only those present here).
        meta: what the source says about itself (``source``, ``classes``).
        positions: this set's samples' positions in ``inputs`` (default: all of them, in order).
    """

    inputs: SampleInputs
    y: torch.Tensor
    ids: np.ndarray
    num_classes: int
    meta: dict = field(default_factory=dict)
    positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        from mlflow_unlearn.data.inputs import TensorInputs

        if isinstance(self.inputs, torch.Tensor):
            object.__setattr__(self, "inputs", TensorInputs(self.inputs))
        ids = _as_id_array(self.ids)
        object.__setattr__(self, "ids", ids)
        positions = np.arange(len(self.inputs)) if self.positions is None else np.asarray(self.positions)
        object.__setattr__(self, "positions", positions.astype(np.int64, copy=False))
        y = torch.as_tensor(self.y)
        if len(positions) != y.shape[0] or y.shape[0] != ids.shape[0]:
            raise ValueError(f"Expected inputs, y and ids of equal length but got {len(positions)}, {y.shape[0]}, "
                             f"{ids.shape[0]}")
        object.__setattr__(self, "y", y.long() if y.dtype != torch.int64 else y)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        # Never the IDs or the inputs: a repr ends up in logs and tracebacks, and the set may be a forget set.
        return (f"SampleSet(n={len(self)}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"id_dtype={'int' if self.ids.dtype.kind == 'i' else 'str'}, storage={self.inputs.storage!r})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[int(self.positions[index])], self.y[index]

    def read_batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and labels of the samples at ``index`` (positions in this set), as two stacked tensors."""
        index = np.asarray(index, dtype=np.int64)
        return self.inputs.read_many(self.positions[index]), self.y[torch.from_numpy(index)]

    def batch_reader(self):
        """:meth:`read_batch` when a batch is one cheap indexing (inputs in memory or memory-mapped), else None:
        what :func:`mlflow_unlearn.runtime.make_loader` reads whole batches with."""
        return self.read_batch if self.inputs.batched else None

    @property
    def reads_files(self) -> bool:
        """Whether reading a sample decodes a file or runs the user's code (worth DataLoader worker processes)."""
        return self.inputs.parallel

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.inputs.sample_shape)

    @property
    def in_channels(self) -> int:
        return int(self.input_shape[0]) if len(self.input_shape) == 3 else 1

    @property
    def input_size(self) -> int:
        """Spatial side for images, feature count for flat inputs."""
        return int(self.input_shape[-1])

    def first_inputs(self, count: int) -> torch.Tensor:
        """The inputs of the first ``count`` samples (fewer if the set is smaller), stacked: a sample of the data
        for shape checks and the ONNX parity check, never the whole set."""
        return self.read_batch(np.arange(min(count, len(self))))[0]

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All inputs and labels stacked into two tensors: for sets known to be small (tests, a handful of samples);
        everything else streams through a loader."""
        return self.read_batch(np.arange(len(self)))

    def subset(self, index: np.ndarray | torch.Tensor | list[int]) -> SampleSet:
        """A new set holding the samples at positions ``index`` (boolean mask or integer positions) of this one."""
        idx = np.asarray(index.numpy() if isinstance(index, torch.Tensor) else index)
        if idx.dtype == bool:
            idx = idx.nonzero()[0]
        idx = idx.astype(np.int64, copy=False)
        return SampleSet(self.inputs, self.y[torch.from_numpy(idx)], self.ids[idx], self.num_classes,
                         dict(self.meta), self.positions[idx])

    def classes_present(self) -> list[int]:
        """Sorted labels that occur in this set."""
        return sorted(int(c) for c in torch.unique(self.y).tolist())


@dataclass(frozen=True)
class DataSplit:
    """A train/test split of one source, with the information needed to reproduce it.

    Args:
        train: the training side.
        test: the held-out side.
        source: the source string it was loaded from.
        seed: the seed of the seeded split (as passed to ``load_data``).
        test_fraction: the held-out fraction of the seeded split (as passed to ``load_data``).
        explicit: True when the source carries its own split (a ``split`` array or column, ``train/`` and
            ``test/`` folders, a factory's datasets), which the source's data decide alone: ``seed`` and
            ``test_fraction`` are then unused, and loading the source again with any seed gives the same split.
        val: the validation side of an explicit split that has one (samples marked ``val``), else None. No metric
            reads it: it is there for methods that need held-out samples of their own (e.g. non-members to tune
            against) without touching the test side.
    """

    train: SampleSet
    test: SampleSet
    source: str
    seed: int
    test_fraction: float
    explicit: bool = False
    val: SampleSet | None = None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


@dataclass(frozen=True)
class ForgetSplit:
    """The result of applying a forget specification to a train/test split.

    ``forget`` and ``retain`` are disjoint and together form the whole train set. ``digest`` is the
    SHA-256 of the sorted forget IDs and ``count`` their number: the only traces of the forget set that
    may be recorded anywhere.
    """

    forget: SampleSet
    retain: SampleSet
    test: SampleSet
    kind: str  # "class" or "sample"
    spec: str  # the forget spec with any file path kept but no IDs
    digest: str
    count: int
    forget_classes: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return self.retain.num_classes
