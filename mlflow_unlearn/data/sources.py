"""Data sources, each named by a short URI-like string (``digits``, ``mnist5k``, ``npz:<path>`` ...).

(Contract stub: only ``digits`` so far; the data-layer work extends this module.)
"""

from __future__ import annotations

import numpy as np
import torch

from mlflow_unlearn.data.samples import DataSplit, SampleSet


def _split(x: torch.Tensor, y: torch.Tensor, ids: np.ndarray, num_classes: int, *, source: str, seed: int,
           test_fraction: float) -> DataSplit:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    full = SampleSet(x, y, ids, num_classes, {"source": source})
    return DataSplit(full.subset(np.sort(order[n_test:])), full.subset(np.sort(order[:n_test])), source, seed,
                     test_fraction)


def load_data(source: str, *, seed: int = 0, test_fraction: float = 0.2) -> DataSplit:
    """Load ``source`` and split it deterministically into train and test from ``seed``."""
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        return _split(x, y, np.arange(len(y)), 10, source=source, seed=seed, test_fraction=test_fraction)
    raise ValueError(f"Unknown data source {source!r}; expected one of: digits")
