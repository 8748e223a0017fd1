"""Non-member samples for methods that need the model's behaviour on data it never saw.

A method such as NITC distils the forget samples towards what the original model does on samples it was never
trained on. Those samples must come from outside the training split, and no metric may be computed on them
afterwards (a test metric on samples the method looked at would flatter it). Two sources, in this order:

1. **The user's validation part.** A source whose own split names a validation part (a split value ``val``,
   exposed as ``DataSplit.val``) gives all of it: the test side is left whole.
2. **A carve-out from the test side** otherwise: per class, a seeded ``NONMEMBER_SHARE`` of the test samples
   (at least one where the class has two or more, and always leaving at least one), chosen by a hash of the seed
   and each sample's ID (:func:`~mlflow_unlearn.data.samples.seeded_order`), so the same data and seed give the
   same carve-out on every machine. The returned forget split's test side no longer holds them: evaluating it
   never sees them.

>>> import torch
>>> from mlflow_unlearn.data.samples import ForgetSplit, SampleSet
>>> test = SampleSet(torch.zeros(40, 2), torch.arange(40) % 2, np.arange(40), 2)
>>> empty = SampleSet(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), np.arange(0), 2)
>>> fsplit = ForgetSplit(empty, empty, test, "sample", "doc", "", 0)
>>> kept, nonmember = hold_out_nonmembers(fsplit, seed=0)
>>> len(nonmember), len(kept.test), sorted(nonmember.y.tolist()).count(1)
(4, 36, 2)
>>> set(nonmember.ids.tolist()) & set(kept.test.ids.tolist())
set()
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from mlflow_unlearn.data.samples import seeded_order

if TYPE_CHECKING:
    from mlflow_unlearn.data.samples import DataSplit, ForgetSplit, SampleSet

NONMEMBER_SHARE = 0.1
"""Share of each class's test samples carved out as non-members when the source names no validation part."""
NONMEMBER_PURPOSE = "nonmember-carve-out"
"""Keeps the carve-out's seeded order independent of the train/test split's and of random forget sets'."""


def carve_out_mask(labels: np.ndarray, ids: np.ndarray, *, seed: int, share: float = NONMEMBER_SHARE) -> np.ndarray:
    """A boolean mask of the samples to carve out: per class ``round(share * n)`` of its ``n`` samples, at least one
    when ``n >= 2`` and never all of them, picked in :func:`seeded_order` of the IDs.

    >>> int(carve_out_mask(np.array([0] * 10 + [1] * 3 + [2]), np.arange(14), seed=0).sum())
    2
    """
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    order = seeded_order(np.asarray(ids), seed=seed, purpose=NONMEMBER_PURPOSE)
    ranked = labels[order]
    for label in np.unique(labels):
        members = order[ranked == label]
        count = min(len(members) - 1, max(1, round(share * len(members))))
        mask[members[:max(count, 0)]] = True
    return mask


def hold_out_nonmembers(fsplit: ForgetSplit, *, seed: int, split: DataSplit | None = None,
                        share: float = NONMEMBER_SHARE) -> tuple[ForgetSplit, SampleSet]:
    """The non-member samples a method may use and the forget split to evaluate, which holds none of them.

    Args:
        fsplit: the forget split (its ``test`` side is what the metrics use).
        seed: seeds the carve-out (the split's or the run's seed).
        split: the data split; when it has a non-empty validation part (``split.val``), that part is the non-member
            set and ``fsplit`` is returned unchanged.
        share: the share of each class's test samples carved out otherwise.

    Returns:
        ``(fsplit without the non-members on its test side, the non-member samples)``.

    Raises:
        ValueError: ``share`` outside ``(0, 1)``.
    """
    if not 0 < share < 1:
        raise ValueError(f"Expected argument `share` to be a fraction in (0, 1) but got {share!r}")
    val = split.val if split is not None else None
    if val is not None and len(val) > 0:
        return fsplit, val
    test = fsplit.test
    mask = carve_out_mask(test.y.numpy(), test.ids, seed=seed, share=share)
    return dataclasses.replace(fsplit, test=test.subset(~mask)), test.subset(mask)
