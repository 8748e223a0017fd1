"""In-memory sample sets in which every sample carries a stable sample ID.

Deletion requests name sample IDs, so IDs travel with the tensors through splitting and subsetting.
A :class:`SampleSet` is a ``torch.utils.data.Dataset`` yielding ``(x, y)`` so that any PyTorch code
(and every unlearning method) can consume it; the IDs stay on the side.
"""

from __future__ import annotations

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


@dataclass(frozen=True, eq=False)
class SampleSet(Dataset):
    """Samples ``x`` (float32, ``N x C x H x W`` or ``N x F``), labels ``y`` (int64, ``N``) and IDs.

    Args:
        x: the inputs.
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
        if self.x.dtype != torch.float32:
            object.__setattr__(self, "x", self.x.float())

    def __len__(self) -> int:
        return int(self.y.shape[0])

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
        return sorted(int(c) for c in torch.unique(self.y).tolist())


@dataclass(frozen=True)
class DataSplit:
    """A train/test split of one source, with the information needed to reproduce it."""

    train: SampleSet
    test: SampleSet
    source: str
    seed: int
    test_fraction: float

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
