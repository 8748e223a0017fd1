"""A registry of model architectures, in the manner of timm's ``@register_model``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(in_channels, num_classes, input_size, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"A model named {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted.

    >>> "smallcnn" in list_models()
    True
    """
    return sorted(_MODELS)


def create_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs) -> nn.Module:
    """Build architecture ``name`` for inputs of ``in_channels x input_size x input_size``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or non-positive sizes.

    >>> create_model("mlp", in_channels=1, num_classes=10, input_size=8).__class__.__name__
    'MLP'
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of: {', '.join(list_models())}")
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{arg}` to be a positive int but got {value!r}")
    if num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be at least 2 but got {num_classes}")
    return _MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)
