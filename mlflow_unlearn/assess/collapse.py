"""The collapse check: a method's result that lost most of what the original knew of the retain set is refused.

:func:`~mlflow_unlearn.methods.run_method` calls :func:`check_not_collapsed` on every method's result (the
``retrain`` reference excepted) before anyone measures it: a collapsed model is a failed run, not a model to
assess.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.metrics.evaluate import collect_outputs
from mlflow_unlearn.metrics.functional import accuracy

COLLAPSE_SHARE = 0.5
"""A result that keeps less than this share of the original's retain accuracy above chance has collapsed."""
COLLAPSE_CHECK_SAMPLES = 512
"""Retain samples (seeded) on which :func:`check_not_collapsed` compares the result with the original."""


def _accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of ``model`` on ``data``, on the device the model is on."""
    return accuracy(*collect_outputs(model, data, device=next(model.parameters()).device))


def check_not_collapsed(name: str, original: nn.Module, result: nn.Module, retain: Dataset, *, num_classes: int,
                        seed: int) -> None:
    """Raise :class:`UnlearningDivergedError` when ``result`` lost most of what ``original`` knew of ``retain``.

    Scale-free: with ``a`` the accuracy above chance (``1 / num_classes``) on up to ``COLLAPSE_CHECK_SAMPLES``
    seeded retain samples, the result has collapsed when ``a(result) < COLLAPSE_SHARE * a(original)``, e.g.
    retain accuracy 40% where the original has 99% on ten classes. Forgetting must leave the retained data
    alone; a model that lost half of it is a failed run, not an unlearned model.

    >>> model = nn.Linear(2, 2)
    >>> data = torch.utils.data.TensorDataset(torch.eye(2), torch.tensor([0, 1]))
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
    >>> check_not_collapsed("demo", model, model, data, num_classes=2, seed=0)
    >>> broken = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = broken.weight.copy_(-torch.eye(2)), broken.bias.zero_()
    >>> try:
    ...     check_not_collapsed("demo", model, broken, data, num_classes=2, seed=0)
    ... except rt.UnlearningDivergedError as exc:
    ...     print(str(exc).split(":")[0])
    Method 'demo' collapsed the model
    """
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(retain), generator=gen)[:COLLAPSE_CHECK_SAMPLES].tolist()
    sample = torch.utils.data.Subset(retain, index)
    chance = 1.0 / num_classes
    before, after = _accuracy(original, sample), _accuracy(result, sample)
    if before > chance and after - chance < COLLAPSE_SHARE * (before - chance):
        raise rt.UnlearningDivergedError(
            f"Method {name!r} collapsed the model: retain accuracy {after:.1%} against the original's {before:.1%} "
            f"on {len(index)} retain samples (chance {chance:.1%}); its result was discarded. Lower the method's "
            "learning rate or number of steps, or use another method.")
