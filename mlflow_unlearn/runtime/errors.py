"""The errors of the engine, and the finite-loss guard that raises one.

Exported from the package root as well: ``from mlflow_unlearn import UnlearningDivergedError``.
"""

from __future__ import annotations

import math

import torch


class UnlearningDivergedError(RuntimeError):
    """Raised when a loss becomes NaN or infinite: the result would be garbage, so nothing is returned."""


def check_finite(loss: torch.Tensor, *, where: str) -> None:
    """Raise :class:`UnlearningDivergedError` if ``loss`` is NaN/inf.

    This reads one scalar from the device, so call it once per epoch on an accumulated tensor (or every
    N steps), never per batch inside hot loops on CUDA.

    Args:
        loss: a scalar tensor.
        where: what computed the loss (method and stage), named in the error.

    Raises:
        UnlearningDivergedError: if the loss is NaN or infinite.

    >>> check_finite(torch.tensor(0.5), where="finetune")
    >>> check_finite(torch.tensor(float("nan")), where="finetune")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlflow_unlearn.runtime.errors.UnlearningDivergedError: finetune: the loss became nan; ...
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise UnlearningDivergedError(
            f"{where}: the loss became {value}; the method diverged and its result was discarded. "
            "Lower the learning rate or check the data for NaN values."
        )
