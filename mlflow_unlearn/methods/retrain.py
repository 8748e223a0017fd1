"""Retraining from scratch on the retain set: exact unlearning, the reference every method is judged against.

The model is re-initialised (every submodule with ``reset_parameters``, seeded:
:func:`~mlflow_unlearn.models.surgery.reinitialize`) and trained on the retain
set only with the original training recipe (:func:`mlflow_unlearn.training.train`), so the result is a
sample of what the model would have been had the forget data never been seen. See e.g. Bourtoule et al.,
"Machine Unlearning", IEEE S&P 2021 (https://arxiv.org/abs/1912.03817), on retraining as exact unlearning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.methods.registry import UnlearnContext, register_method
from mlflow_unlearn.models.surgery import reinitialize
from mlflow_unlearn.training import TrainConfig, train


@dataclass
class RetrainConfig(TrainConfig):
    """The training recipe (the same fields and defaults as :class:`mlflow_unlearn.training.TrainConfig`).

    Pass the original model's recipe to obtain a faithful reference.
    """


@register_method("retrain", RetrainConfig, distributed=True, is_reference=True)
def retrain(
    model: nn.Module, *, forget: Dataset, retain: Dataset, config: RetrainConfig, context: UnlearnContext
) -> tuple[nn.Module, rt.History]:
    """Re-initialise the model and train it on the retain set only with the original recipe."""
    reinitialize(model, seed=context.seed)
    recipe = TrainConfig(**dataclasses.asdict(config))
    return train(model, retain, recipe, device=context.device, desc="retrain")
