"""``torchvision:<Name>?root=<dir>``: a dataset class of ``torchvision.datasets``, read from local files."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_unlearn.data.grammar import parse_flag
from mlflow_unlearn.data.inputs import DatasetInputs, SampleInputs
from mlflow_unlearn.data.sources.core import RawSamples, _builtin_loader, _encode_labels


def _torchvision_parts(dataset_cls: type) -> list[dict[str, Any]]:
    """Constructor arguments selecting the official train and test parts of a torchvision dataset."""
    params = inspect.signature(dataset_cls).parameters
    if "train" in params:
        return [{"train": True}, {"train": False}]
    if "split" in params:
        return [{"split": "train"}, {"split": "test"}]
    return [{}]


def _dataset_labels(dataset: Any) -> np.ndarray:
    """The labels of a dataset, from its ``targets`` or ``labels`` attribute, else by reading every sample once."""
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if targets is not None and len(targets) == len(dataset):
        return np.asarray(targets)
    return np.asarray([dataset[i][1] for i in range(len(dataset))])


@_builtin_loader("torchvision")
def _torchvision(argument: str, options: dict[str, str]) -> RawSamples:
    import torchvision.datasets
    from torchvision.datasets import VisionDataset

    dataset_cls = getattr(torchvision.datasets, argument, None)
    if not (isinstance(dataset_cls, type) and issubclass(dataset_cls, VisionDataset)):
        raise ValueError(f"Unknown torchvision dataset {argument!r}; expected a dataset class of torchvision.datasets "
                         "such as MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100 or SVHN")
    root = options.get("root")
    download = parse_flag("download", options.get("download", "0"))
    if not root:
        raise ValueError(f"torchvision:{argument} needs a local root folder: write torchvision:{argument}?root=<dir> "
                         "(add &download=1 to allow downloading into it)")
    if not Path(root).is_dir() and not download:
        raise ValueError(f"The torchvision root {root!r} does not exist; point root= at the folder that holds "
                         f"{argument}'s files or add &download=1 to allow downloading")
    where = f"torchvision:{argument} under {root!r}"
    accepts_download = "download" in inspect.signature(dataset_cls).parameters
    if download and not accepts_download:
        raise ValueError(f"torchvision:{argument} cannot download its files; drop the option download=1")
    datasets = []
    for part in _torchvision_parts(dataset_cls):
        if accepts_download:
            part["download"] = download
        try:
            datasets.append(dataset_cls(root, **part))
        except RuntimeError as err:
            hint = "" if download else " or add &download=1 to allow downloading"
            raise ValueError(f"Cannot load {where}: {err}; put the dataset files there{hint}") from None
    y = np.concatenate([_dataset_labels(d) for d in datasets])
    arrays = [getattr(d, "data", None) for d in datasets]
    if all(a is not None and len(a) == len(d) and np.asarray(a).dtype.kind in "biuf"
           for a, d in zip(arrays, datasets, strict=True)):
        # pixels the dataset holds in memory anyway (MNIST family, CIFAR, SVHN): kept as they are (8-bit), converted
        # a batch at a time
        inputs: SampleInputs | np.ndarray = np.concatenate([np.asarray(a) for a in arrays])
    else:
        inputs = _dataset_inputs(datasets, where=where)
    codes, num_classes, _ = _encode_labels(y, where=where)
    classes = list(getattr(datasets[-1], "classes", []) or []) or None
    if classes is not None and len(classes) >= num_classes:
        num_classes = len(classes)
    else:
        classes = None
    return RawSamples(inputs, codes, np.arange(len(codes)), num_classes, classes)


def _dataset_inputs(datasets: list[Any], *, where: str) -> DatasetInputs:
    """The inputs of datasets read item by item; every part's first sample must have one shape."""
    from mlflow_unlearn.data.inputs import as_input_tensor

    shapes = {tuple(as_input_tensor(d[0][0]).shape) for d in datasets if len(d)}
    if len(shapes) > 1:
        raise ValueError(f"The samples of {where} have different shapes {sorted(shapes)[:5]}; add the option ?size= "
                         "to resize them")
    return DatasetInputs(datasets, next(iter(shapes)), where=where)
