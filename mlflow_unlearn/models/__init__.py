"""Model architectures by name; any user ``nn.Module`` works through the API as well.

:func:`class_scores` is the one rule that reads the class scores from a model's output (a tensor, a tuple or list,
a dict with ``logits``, an object with ``.logits``); :func:`check_one_input` refuses multi-input models. See
:mod:`mlflow_unlearn.models.interface`.
"""

from mlflow_unlearn.models import architectures as _architectures  # noqa: F401  (registers the built-ins)
from mlflow_unlearn.models.interface import (
    ModelInputError,
    ModelOutputError,
    ScoresOnly,
    check_one_input,
    class_scores,
)
from mlflow_unlearn.models.registry import create_model, list_models, register_model, unregister_model

__all__ = [
    "ModelInputError",
    "ModelOutputError",
    "ScoresOnly",
    "check_one_input",
    "class_scores",
    "create_model",
    "list_models",
    "register_model",
    "unregister_model",
]
