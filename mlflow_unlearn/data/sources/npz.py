"""``npz:<path>``: a NumPy ``.npz`` with arrays ``x``, ``y`` and optionally ``ids`` and ``split``, memory-mapped."""

from __future__ import annotations

import numpy as np

from mlflow_unlearn.data.inputs import npz_member
from mlflow_unlearn.data.sources.core import SPLIT_VALUES, RawSamples, _as_inputs, _builtin_loader, _encode_labels


@_builtin_loader("npz")
def _npz(argument: str, options: dict[str, str]) -> RawSamples:
    where = f"npz file {argument!r}"
    try:
        archive = np.load(argument, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the {where}: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"The {where} is a single .npy array; expected an .npz archive with arrays `x` and `y`")
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"The {where} lacks array(s) {missing}; expected `x`, `y` and optionally `ids` and "
                             f"`split` but found {archive.files}")
        try:
            y = archive["y"]
            ids = archive["ids"] if "ids" in archive.files else np.arange(len(y))
            split = archive["split"] if "split" in archive.files else None
            x = npz_member(argument, "x")  # memory-mapped: never read whole
        except ValueError as err:
            raise ValueError(f"Cannot read the arrays of the {where} (object arrays are not accepted): {err}") from None
    if len(x) != len(y) or len(ids) != len(y) or np.ndim(ids) != 1:
        raise ValueError(f"The {where} has mismatched lengths: x {len(x)}, y {len(y)}, ids {len(ids)}; "
                         "expected one row of each per sample")
    if split is not None and (np.ndim(split) != 1 or len(split) != len(y)):
        raise ValueError(f"The {where} has a `split` array shaped {tuple(np.shape(split))} for {len(y)} samples; "
                         f"expected one of {', '.join(map(repr, SPLIT_VALUES))} per sample")
    if ids.dtype.kind not in "iuUS":
        raise ValueError(f"Expected `ids` in the {where} to be ints or strings but got dtype {ids.dtype}")
    codes, num_classes, classes = _encode_labels(y, where=where)
    return RawSamples(_as_inputs(x, where=where), codes, ids, num_classes, classes, split)
