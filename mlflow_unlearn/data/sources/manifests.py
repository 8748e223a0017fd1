"""``csv:<path>`` and ``parquet:<path>``: a manifest table of IDs and labels, with image paths or pixel columns."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from mlflow_unlearn.data._files import id_column, read_table
from mlflow_unlearn.data.sources.core import RawSamples, _as_inputs, _builtin_loader, _encode_labels
from mlflow_unlearn.data.sources.images import _image_files


def _parse_shape(text: str, n_features: int, *, where: str) -> tuple[int, ...]:
    if text == "flat":
        return (n_features,)
    if text == "auto":
        side = math.isqrt(n_features)
        return (1, side, side) if side * side == n_features else (n_features,)
    if not re.fullmatch(r"\d+(x\d+){1,2}", text):
        raise ValueError(f"Expected option `shape` to be CxHxW, HxW (e.g. 1x28x28), flat or auto but got {text!r}")
    shape = tuple(int(v) for v in text.split("x"))
    if math.prod(shape) != n_features:
        raise ValueError(f"Option shape={text} holds {math.prod(shape)} values but {where} has {n_features} "
                         "pixel columns")
    return shape if len(shape) == 3 else (1, *shape)


def _manifest(fmt: str, argument: str, options: dict[str, str]) -> RawSamples:
    where = f"{fmt} manifest {argument!r}"
    table = read_table(argument, fmt, what=f"{fmt} manifest", required=("id", "label"))
    if table["label"].isna().any():
        raise ValueError(f"{int(table['label'].isna().sum())} rows of the {where} have no label")
    ids = id_column(table["id"], what=f"{fmt} manifest")
    codes, num_classes, classes = _encode_labels(table["label"].to_numpy(), where=where)
    split = table["split"].to_numpy(dtype=object) if "split" in table.columns else None
    if "path" in table.columns:
        if "shape" in options:
            raise ValueError(f"Option `shape` applies to pixel columns but the {where} has a `path` column")
        base = Path(argument).parent
        paths = [Path(p) if Path(p).is_absolute() else base / p for p in table["path"].astype(str)]
        missing = sum(not p.is_file() for p in paths)
        if missing:  # how many, not which: a file name may be an ID
            raise ValueError(f"{missing} image files named by the {where} do not exist; relative paths are read from "
                             "the manifest's folder")
        return RawSamples(_image_files(paths, options, where=where), codes, ids, num_classes, classes, split)
    if "mode" in options:
        raise ValueError(f"Option `mode` applies to a `path` column but the {where} has pixel columns")
    pixels = table.drop(columns=[c for c in ("id", "label", "split") if c in table.columns])
    if pixels.shape[1] == 0:
        raise ValueError(f"The {where} has neither a `path` column nor pixel columns besides `id`, `label` and "
                         "`split`")
    non_numeric = [str(c) for c in pixels.columns if not pd.api.types.is_numeric_dtype(pixels[c])]
    if non_numeric:
        raise ValueError(f"Expected numeric pixel columns in the {where} but {non_numeric[:10]} are not")
    values = pixels.to_numpy()
    n_features = values.shape[1]
    values = values.reshape(len(values), *_parse_shape(options.get("shape", "auto"), n_features, where=where))
    return RawSamples(_as_inputs(values, where=where), codes, ids, num_classes, classes, split)


@_builtin_loader("csv")
def _csv(argument: str, options: dict[str, str]) -> RawSamples:
    return _manifest("csv", argument, options)


@_builtin_loader("parquet")
def _parquet(argument: str, options: dict[str, str]) -> RawSamples:
    return _manifest("parquet", argument, options)
