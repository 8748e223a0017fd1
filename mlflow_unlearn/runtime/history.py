"""What a run reports while and after it runs: the progress bar and :class:`History`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from mlflow_unlearn.runtime.distributed import rank


def progress(iterable: Any, *, desc: str, total: int | None = None, enabled: bool | None = None) -> Iterator:
    """A tqdm progress bar for people, silent under CI (``CI`` set), on non-zero ranks, or when disabled."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = not os.environ.get("CI") and rank() == 0 and not os.environ.get("MLFLOW_UNLEARN_QUIET")
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False)


class History:
    """Per-step records (losses, timings) of a training or unlearning run.

    ``records`` is a list of flat dicts (one per epoch or stage); ``wall_time_s`` the total wall time.

    >>> history = History()
    >>> history.log(epoch=0, loss=torch.tensor(0.5))
    >>> history.records
    [{'epoch': 0, 'loss': 0.5}]
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.wall_time_s: float = 0.0
        self.extra: dict[str, Any] = {}

    def log(self, **values: Any) -> None:
        self.records.append({k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in values.items()})

    def to_frame(self):
        """The records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def __repr__(self) -> str:
        return f"History(records={len(self.records)}, wall_time_s={self.wall_time_s:.2f})"
