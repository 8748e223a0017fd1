"""Models as users write them, whose outputs are not a plain tensor, and the generated text task they learn.

- :class:`TextClassifier`: token IDs in (``nn.Embedding`` first, a positional embedding, one transformer encoder
  layer, mean pooling), a Hugging Face style output object out (``.logits``);
- :class:`DictOutputNet`: images in (a convolution with BatchNorm first), a dict with ``logits`` (and the features)
  out.

:func:`token_sequences` generates the text task: each class prefers its own block of the vocabulary (no download).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def token_sequences(n: int, *, classes: int = 4, vocab: int = 48, length: int = 12, signal: float = 0.6,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` token sequences (int64, ``n x length``) and their classes (balanced, ``n``).

    Each token is drawn from its class's block of ``vocab // classes`` tokens with probability ``signal``, else
    uniformly from the whole vocabulary.

    >>> x, y = token_sequences(8)
    >>> x.dtype, x.shape, y.tolist()
    (dtype('int64'), (8, 12), [0, 1, 2, 3, 0, 1, 2, 3])
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    block = vocab // classes
    own = block * y[:, None] + rng.integers(0, block, (n, length))
    x = np.where(rng.random((n, length)) < signal, own, rng.integers(0, vocab, (n, length)))
    return x.astype(np.int64), y


@dataclass
class TextOutput:
    """What :class:`TextClassifier` returns, in the manner of Hugging Face's ``ModelOutput``."""

    logits: torch.Tensor
    pooled: torch.Tensor


class TextClassifier(nn.Module):
    """Token IDs (``batch x length``, int64) -> embedding + positions -> one encoder layer -> mean -> classes."""

    def __init__(self, vocab: int = 48, classes: int = 4, length: int = 12, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextOutput:
        positions = self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        pooled = self.encoder(self.embed(input_ids) + positions).mean(1)
        return TextOutput(logits=self.classifier(pooled), pooled=pooled)


class DictOutputNet(nn.Module):
    """Images (``batch x 1 x 8 x 8``) -> convolution, BatchNorm -> hidden layer -> ``{"logits", "features"}``."""

    def __init__(self, classes: int = 10, side: int = 8, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Flatten())
        self.hidden = nn.Linear(width * side * side, 64)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.hidden(self.features(x)).relu()
        return {"logits": self.classifier(features), "features": features}
