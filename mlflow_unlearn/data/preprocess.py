"""Preprocessing named in a source string: resize, centre crop and per-channel normalisation of every sample.

The options (``size``, ``crop``, ``mean``, ``std``, see :data:`~.grammar.PREPROCESS_OPTIONS`) belong to the source
string, so the data lineage records them and every consumer of a sample set (training, every method, the
evaluation, both membership attacks, the gate, the ONNX parity check) reads exactly the inputs the model was trained
on: they are applied where a sample is read, nowhere else.

Order: resize, then centre crop, then ``(x - mean) / std``; as torchvision's usual ``Resize``, ``CenterCrop``,
``ToTensor``, ``Normalize`` on inputs already in [0, 1]. ``size`` sets height and width exactly (``size=256`` is
256x256, as ``Resize((256, 256))``). Image files are resized by Pillow when decoded (bilinear, as torchvision's PIL
path); tensors and arrays by ``torch.nn.functional.interpolate`` (bilinear, antialiased).

>>> pre = Preprocess(crop=(2, 2), mean=(0.5,), std=(0.25,))
>>> pre(torch.ones(1, 4, 4)).shape, float(pre(torch.ones(1, 4, 4))[0, 0, 0])
(torch.Size([1, 2, 2]), 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    """The per-sample preprocessing of a source.

    Args:
        size: resize to ``(height, width)``; None keeps the size.
        crop: centre crop to ``(height, width)``; None keeps the size.
        mean: per-channel mean subtracted (with ``std``); None: no normalisation.
        std: per-channel standard deviation divided by.
    """

    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def identity(self) -> bool:
        """Whether it changes nothing."""
        return self.size is None and self.crop is None and self.mean is None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a sample of ``shape`` after preprocessing."""
        if len(shape) != 3:
            return shape
        height, width = self.size or shape[1:]
        if self.crop is not None:
            height, width = self.crop
        return (shape[0], height, width)

    def check(self, shape: tuple[int, ...], *, where: str) -> None:
        """Fail when the options cannot apply to samples of ``shape`` (checked before any sample is read).

        Raises:
            ValueError: resize or crop of flat features, a crop larger than the image, a normalisation with
                another number of values than channels.
        """
        if len(shape) != 3 and (self.size is not None or self.crop is not None):
            raise ValueError(f"Options `size` and `crop` apply to images (channels x height x width) but the samples "
                             f"of {where} have shape {tuple(shape)}")
        if self.crop is not None:
            height, width = self.size or shape[1:]
            if self.crop[0] > height or self.crop[1] > width:
                raise ValueError(f"Option crop={self.crop[0]}x{self.crop[1]} is larger than the images of {where} "
                                 f"({height}x{width}); crop to at most their size (or resize first with size=)")
        if self.mean is not None:
            channels = shape[0] if len(shape) == 3 else 1
            if len(self.mean) not in ({channels} if len(shape) == 3 else {1}):
                kind = f"{channels} channel{'s' * (channels != 1)}" if len(shape) == 3 else "flat features"
                expected = channels if len(shape) == 3 else 1
                raise ValueError(f"Options `mean` and `std` give {len(self.mean)} values but the samples of {where} "
                                 f"have {kind} (shape {tuple(shape)}); give {expected} value"
                                 f"{'s' * (expected != 1)} each")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocess one sample (``C x H x W``, or flat features)."""
        return x if self.identity else self.batch(x[None])[0]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch (``N x C x H x W``, or ``N x F``)."""
        if self.identity:
            return x
        image = x.dim() == 4
        if image and self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x.float(), size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if image and self.crop is not None:
            height, width = x.shape[-2:]
            top, left = int(round((height - self.crop[0]) / 2.0)), int(round((width - self.crop[1]) / 2.0))
            x = x[..., top:top + self.crop[0], left:left + self.crop[1]]
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32)
            std = torch.tensor(self.std, dtype=torch.float32)
            if image:
                mean, std = mean[:, None, None], std[:, None, None]
            x = (x.float() - mean) / std
        return x.contiguous()
