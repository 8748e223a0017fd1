"""The built-in architectures: ``mlp``, ``smallcnn``, ``bncnn`` and torchvision's ``resnet18``."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlflow_unlearn.models.registry import register_model


class MLP(nn.Module):
    """Two hidden layers with ReLU over the flattened input (integer features, e.g. category codes, as floats)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (BatchNorm, ReLU, max-pool where the input allows) and a two-layer head."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, width: int = 32) -> None:
        super().__init__()
        pool = input_size >= 16
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BatchNormCNN(nn.Module):
    """A CNN with BatchNorm after every layer but the last, the classifier included: three conv blocks (conv,
    BatchNorm, ReLU; max-pool after the first two where the input allows), global average pooling, and a
    classifier ``Linear -> BatchNorm1d -> ReLU -> Linear``.

    Its outputs depend on BatchNorm's running statistics more than ``smallcnn``'s (whose classifier has none), so
    how a method treats them in training shows on it.
    """

    def __init__(self, in_channels: int, num_classes: int, input_size: int, width: int = 32) -> None:
        super().__init__()
        pool = input_size >= 16

        def block(cin: int, cout: int, down: bool) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.MaxPool2d(2) if down else nn.Identity()]

        self.features = nn.Sequential(*block(in_channels, width, pool), *block(width, 2 * width, pool),
                                      *block(2 * width, 2 * width, False), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width, 128, bias=False), nn.BatchNorm1d(128),
                                        nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _require_images(name: str, input_shape: tuple[int, ...] | None) -> None:
    if input_shape is not None and len(input_shape) != 3:
        raise ValueError(f"Model {name!r} needs image samples (channels x height x width) but the samples have "
                         f"shape {tuple(input_shape)}; use 'mlp' for flat feature vectors")


@register_model("mlp")
def mlp(*, in_channels: int, num_classes: int, input_size: int, hidden: int = 256,
        input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Two hidden layers over the flattened sample: any ``input_shape`` (flat features or images)."""
    features = math.prod(input_shape) if input_shape is not None else in_channels * input_size * input_size
    return MLP(features, num_classes, hidden)


@register_model("smallcnn")
def smallcnn(*, in_channels: int, num_classes: int, input_size: int, width: int = 32,
             input_shape: tuple[int, ...] | None = None) -> nn.Module:
    _require_images("smallcnn", input_shape)
    side = min(input_shape[1:]) if input_shape is not None else input_size
    return SmallCNN(in_channels, num_classes, side, width)


@register_model("bncnn")
def bncnn(*, in_channels: int, num_classes: int, input_size: int, width: int = 32,
          input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """:class:`BatchNormCNN`: BatchNorm in every block and in the classifier."""
    _require_images("bncnn", input_shape)
    side = min(input_shape[1:]) if input_shape is not None else input_size
    return BatchNormCNN(in_channels, num_classes, side, width)


@register_model("resnet18")
def resnet18(*, in_channels: int, num_classes: int, input_size: int, cifar_stem: bool | None = None,
             input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """torchvision's ResNet-18 (random init). ``cifar_stem`` (default: input_size <= 64) swaps the 7x7/2
    stem and max-pool for a 3x3/1 convolution, the usual choice for 32x32 images."""
    from torchvision.models import resnet18 as tv_resnet18

    _require_images("resnet18", input_shape)
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if cifar_stem is None:
        cifar_stem = input_size <= 64
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model
