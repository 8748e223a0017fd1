"""Reading the tabular files of the data layer (manifests and deletion requests) with one set of error messages.

IDs are read as text (``"001"`` must not silently become ``1``) and turned into integers only when every
value is the canonical decimal form of an int.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def _read_text(path: Path) -> pd.DataFrame:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return pd.DataFrame({"id": [line for line in lines if line]}, dtype=object)


TABLE_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "csv": _read_csv,
    "parquet": _read_parquet,
    "txt": _read_text,
}
"""Table formats by name; a file's format is its suffix (``.pq`` counts as parquet)."""

_SUFFIX_ALIASES = {"pq": "parquet"}


def _named(what: str, path: Path, show_path: bool) -> str:
    """``the <what> file '<path>'``, or without the path when it must not be shown (a forget request's path may
    name the person whose data it lists)."""
    return f"the {what} file {str(path)!r}" if show_path else f"the {what} file"


def table_format(path: str | Path, *, what: str = "", show_path: bool = True) -> str:
    """The format name of ``path`` from its suffix.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"forget request"``).
        show_path: name the path in messages (False for a forget request file).

    Raises:
        ValueError: for a suffix with no reader (the message lists the accepted ones).

    >>> table_format("/secure/alice.json", what="forget request", show_path=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Cannot tell the format of the forget request file from its suffix; expected one of: .csv, ...
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = _SUFFIX_ALIASES.get(suffix, suffix)
    if fmt not in TABLE_READERS:
        accepted = ", ".join(f".{s}" for s in (*TABLE_READERS, *_SUFFIX_ALIASES))
        subject = _named(what, Path(path), show_path) if what else repr(str(path))
        raise ValueError(f"Cannot tell the format of {subject} from its suffix; expected one of: {accepted}")
    return fmt


def read_table(path: str | Path, fmt: str, *, what: str, required: tuple[str, ...],
               show_path: bool = True) -> pd.DataFrame:
    """Read ``path`` as format ``fmt`` and check that the ``required`` columns are there.

    Args:
        path: the file.
        fmt: a key of :data:`TABLE_READERS`.
        what: what the file is, for messages (e.g. ``"forget request"``).
        required: column names that must be present.
        show_path: name the path in messages. A forget request file is never named: its path may name the person
            whose data it lists; a reader's own error text is then cut to its type and the path removed from it.

    Raises:
        ValueError: when the file is missing, unreadable, malformed, or lacks a required column.

    >>> read_table("/secure/alice.csv", "csv", what="forget request", required=("id",), show_path=False)
    Traceback (most recent call last):
    ...
    ValueError: The forget request file does not exist or is not a file
    """
    path = Path(path)
    subject = _named(what, path, show_path)
    if not path.is_file():
        raise ValueError(f"{subject[0].upper()}{subject[1:]} does not exist or is not a file")
    try:
        table = TABLE_READERS[fmt](path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        detail = str(err) if show_path else str(err).replace(str(path), "<file>").replace(path.name, "<file>")
        raise ValueError(f"Cannot read {subject} as {fmt}: {detail}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        # the columns found are named only where the path may be: a request file's header could be an ID
        found = f" but found {list(map(str, table.columns))}" if show_path else ""
        raise ValueError(
            f"{subject[0].upper()}{subject[1:]} has no column {', '.join(map(repr, missing))}; "
            f"expected columns {', '.join(map(repr, required))}{found}"
        )
    return table


def id_column(values: pd.Series, *, what: str) -> np.ndarray:
    """The ``id`` column as an int64 array (when every value is an int) or a str array.

    Raises:
        ValueError: for missing (empty) IDs or non-integral float IDs.
    """
    if values.isna().any():
        raise ValueError(f"{int(values.isna().sum())} rows of the {what} have an empty `id`; every row needs one")
    if pd.api.types.is_bool_dtype(values):
        raise ValueError(f"Expected the `id` column of the {what} to hold ints or strings but got booleans")
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values):
        floats = values.to_numpy(dtype=np.float64)
        if not np.all(floats == np.round(floats)):
            raise ValueError(f"Expected the `id` column of the {what} to hold ints or strings but got fractions")
        return floats.astype(np.int64)
    text = values.astype(str).to_numpy()
    if all(_is_canonical_int(v) for v in text):
        return text.astype(np.int64)
    return text


def _is_canonical_int(text: str) -> bool:
    try:
        return str(int(text)) == text
    except ValueError:
        return False
