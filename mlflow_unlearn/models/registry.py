"""A registry of model architectures, in the manner of timm's ``@register_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from mlflow_unlearn.registries import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
"""Every registered architecture by name."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(in_channels, num_classes, input_size, **kwargs) -> nn.Module`` under ``name``.

    Raises:
        ValueError: (when decorating) a model named ``name`` is already registered.
    """
    return MODELS.decorator(name)


def unregister_model(name: str) -> ModelFactory:
    """Remove architecture ``name`` from the registry and return its factory.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return MODELS.unregister(name)


def list_models() -> list[str]:
    """Names of all registered architectures, sorted.

    >>> "smallcnn" in list_models()
    True
    """
    return MODELS.names()


def create_model(name: str, *, in_channels: int, num_classes: int, input_size: int,
                 input_shape: tuple[int, ...] | None = None, **kwargs) -> nn.Module:
    """Build architecture ``name`` for inputs of ``in_channels x input_size x input_size``.

    ``input_shape`` (one sample's shape, e.g. ``SampleSet.input_shape``) describes inputs that are not square
    images: flat feature vectors ``(F,)`` or ``C x H x W`` with ``H != W``. It is passed on to factories that
    accept it (all built-in ones do); the convolutional ones refuse flat inputs with a message.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), non-positive sizes, or inputs the
            architecture cannot take.

    >>> create_model("mlp", in_channels=1, num_classes=10, input_size=8).__class__.__name__
    'MLP'
    >>> import torch
    >>> create_model("mlp", in_channels=1, num_classes=3, input_size=20, input_shape=(20,))(torch.zeros(2, 20)).shape
    torch.Size([2, 3])
    """
    factory = MODELS.get(name)
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes), ("input_size", input_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{arg}` to be a positive int but got {value!r}")
    if num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be at least 2 but got {num_classes}")
    if input_shape is not None:
        input_shape = tuple(input_shape)
        if not input_shape or not all(isinstance(v, int) and v >= 1 for v in input_shape):
            raise ValueError(f"Expected argument `input_shape` to be a tuple of positive ints but got {input_shape!r}")
        if "input_shape" in inspect.signature(factory).parameters:
            kwargs["input_shape"] = input_shape
        elif input_shape != (in_channels, input_size, input_size):
            raise ValueError(f"Model {name!r} takes square images ({in_channels}x{input_size}x{input_size}) but the "
                             f"samples have shape {input_shape}")
    return factory(in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)
