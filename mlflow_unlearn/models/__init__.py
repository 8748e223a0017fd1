"""Model architectures by name; any user ``nn.Module`` works through the API as well."""

from mlflow_unlearn.models import architectures as _architectures  # noqa: F401  (registers the built-ins)
from mlflow_unlearn.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
