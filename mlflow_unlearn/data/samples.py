"""In-memory sample sets in which every sample carries a stable sample ID.

Deletion requests name sample IDs, so IDs travel with the tensors through splitting and subsetting.
A :class:`SampleSet` is a ``torch.utils.data.Dataset`` yielding ``(x, y)`` so that any PyTorch code
(and every unlearning method) can consume it; the IDs stay on the side.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


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
    """Samples ``x`` (float32 ``N x C x H x W`` or ``N x F``, or int64 token IDs), labels ``y`` (int64, ``N``) and IDs.

    Args:
        x: the inputs; floating-point inputs become float32, integer ones int64 with their values untouched (token
            IDs for a model with an ``nn.Embedding`` first), booleans float32.
        y: integer class labels.
        ids: one stable ID per sample (ints or strings), unique.
        num_classes: number of classes of the task (not only those present here).
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray
    num_classes: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = _as_id_array(self.ids)
        object.__setattr__(self, "ids", ids)
        if self.x.shape[0] != self.y.shape[0] or self.y.shape[0] != ids.shape[0]:
            raise ValueError(
                f"Expected x, y and ids of equal length but got {self.x.shape[0]}, {self.y.shape[0]}, {ids.shape[0]}"
            )
        if self.y.dtype != torch.int64:
            object.__setattr__(self, "y", self.y.long())
        integer = not self.x.is_floating_point() and self.x.dtype != torch.bool
        if self.x.dtype != (torch.int64 if integer else torch.float32):
            object.__setattr__(self, "x", self.x.long() if integer else self.x.float())

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        # Never the IDs or the tensors: a repr ends up in logs and tracebacks, and the set may be a forget set.
        return (f"SampleSet(n={len(self)}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"id_dtype={'int' if self.ids.dtype.kind == 'i' else 'str'})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1]) if self.x.dim() == 4 else 1

    @property
    def input_size(self) -> int:
        """Spatial side for images, feature count for flat inputs."""
        return int(self.x.shape[-1])

    def subset(self, index: np.ndarray | torch.Tensor | list[int]) -> SampleSet:
        """A new set holding the samples at positions ``index`` (boolean mask or integer positions)."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        np_idx = idx.numpy()
        return SampleSet(self.x[idx], self.y[idx], self.ids[np_idx], self.num_classes, dict(self.meta))

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
            ``test/`` folders), which the source's data decide alone: ``seed`` and ``test_fraction`` are then
            unused, and loading the source again with any seed gives the same split.
    """

    train: SampleSet
    test: SampleSet
    source: str
    seed: int
    test_fraction: float
    explicit: bool = False

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
