"""Retraining from scratch on the retain set: exact unlearning, the reference every method is judged against.

The model is re-initialised (every submodule with ``reset_parameters``, seeded) and trained on the retain
set only with the original training recipe (:func:`mlflow_unlearn.training.train`), so the result is a
sample of what the model would have been had the forget data never been seen. See e.g. Bourtoule et al.,
"Machine Unlearning", IEEE S&P 2021 (https://arxiv.org/abs/1912.03817), on retraining as exact unlearning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.training import TrainConfig, train


@dataclass
class RetrainConfig(TrainConfig):
    """The training recipe (the same fields and defaults as :class:`mlflow_unlearn.training.TrainConfig`).

    Pass the original model's recipe to obtain a faithful reference.
    """


def reset_method(module: nn.Module):
    """The method that re-initialises ``module``'s own parameters: its ``reset_parameters``, or, for a torch module
    that names it ``_reset_parameters`` (``nn.MultiheadAttention``, inside every ``nn.TransformerEncoderLayer``), that
    one; ``None`` when it has neither.

    >>> reset_method(nn.MultiheadAttention(8, 2)).__name__, reset_method(nn.ReLU())
    ('_reset_parameters', None)
    """
    method = getattr(module, "reset_parameters", None)
    if method is None and type(module).__module__.startswith("torch."):
        method = getattr(module, "_reset_parameters", None)
    return method if callable(method) else None


def reinitialize(model: nn.Module, *, seed: int) -> nn.Module:
    """Re-initialise ``model`` in place, seeded, by calling every submodule's ``reset_parameters`` (see
    :func:`reset_method`).

    Raises:
        ValueError: if a module holds parameters of its own but has no ``reset_parameters`` (it would
            keep the trained weights, so the result would not be a retrained model).
    """
    stuck = sorted({type(m).__name__ for m in model.modules()
                    if reset_method(m) is None and any(True for _ in m.parameters(recurse=False))})
    if stuck:
        raise ValueError(
            f"Cannot re-initialise module type(s) {', '.join(stuck)}: they own parameters but define no "
            "`reset_parameters()`. Add one to retrain this architecture."
        )
    torch.manual_seed(seed)
    for module in model.modules():
        method = reset_method(module)
        if method is not None:
            method()
    return model


@register_method("retrain", RetrainConfig, distributed=True, is_reference=True)
def retrain(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: RetrainConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Re-initialise the model and train it on the retain set only with the original recipe."""
    reinitialize(model, seed=context.seed)
    recipe = TrainConfig(**dataclasses.asdict(config))
    return train(model, retain, recipe, device=context.device, desc="retrain")
