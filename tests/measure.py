"""What the test modules measure on a model, defined once: the engine's own accuracy over a data set."""

from __future__ import annotations

import torch
from torch import nn

from mlflow_unlearn.data import SampleSet
from mlflow_unlearn.metrics import accuracy as accuracy_of_outputs
from mlflow_unlearn.metrics import collect_outputs


def accuracy(model: nn.Module, samples: SampleSet, labels: torch.Tensor | None = None) -> float:
    """Fraction (0 to 1) of ``samples`` whose arg-max class score is the label, on the CPU, in eval mode.

    Args:
        model: a classifier (tensor, dict or ``.logits`` outputs: the engine's ``collect_outputs`` reads them all);
            its train/eval mode is left as it was.
        samples: the data set.
        labels: other labels to score against (default: the samples' own).
    """
    outputs = collect_outputs(model, samples, device="cpu")
    return accuracy_of_outputs(outputs.logits, outputs.labels if labels is None else labels)
