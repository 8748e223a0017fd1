"""``factory:<module|file.py>:<callable>``: the user's own ``Dataset`` code (see :mod:`mlflow_unlearn.data.factory`)."""

from __future__ import annotations

import numpy as np

from mlflow_unlearn.data.grammar import PREPROCESS_OPTIONS
from mlflow_unlearn.data.inputs import DatasetInputs
from mlflow_unlearn.data.sources.core import RawSamples, _builtin_loader, _encode_labels


@_builtin_loader("factory")
def _factory(argument: str, options: dict[str, str]) -> RawSamples:
    from mlflow_unlearn.data.factory import call_factory, first_input_shape, side_ids, side_labels

    sides, label = call_factory(argument, {k: v for k, v in options.items() if k not in PREPROCESS_OPTIONS})
    ids = {side: side_ids(data, side=side, label=label) for side, data in sides.items()}
    labels = {side: side_labels(data, side=side, label=label) for side, data in sides.items()}
    shapes = {side: first_input_shape(data, side=side, label=label) for side, data in sides.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{side} {shape} ({dtype})" for side, (shape, dtype) in shapes.items())
        raise ValueError(f"The samples of the {label} differ between its sides: {shown}; a model takes one input "
                         "shape and type: give every side the same resizing and conversion (or use the options size= "
                         "and crop=)")
    codes, num_classes, classes = _encode_labels(np.concatenate(list(labels.values())), where=f"the {label}")
    names = getattr(sides["train"], "classes", None)
    if classes is None and isinstance(names, (list, tuple)) and len(names) >= num_classes:
        classes, num_classes = [str(n) for n in names], len(names)
    split = np.concatenate([np.full(len(data), side) for side, data in sides.items()])
    inputs = DatasetInputs(list(sides.values()), shapes["train"][0], where=f"the {label}'s datasets")
    return RawSamples(inputs, codes, np.concatenate(list(ids.values())), num_classes, classes, split)
