"""Assessment: how well a model forgot, and whether it may be registered.

:func:`assess` measures models on a forget split (the metrics table, one forward pass per model and set), runs the
membership test and returns the acceptance gate's verdict on each unlearned model (:class:`Assessment`);
:func:`check_not_collapsed` refuses a method's result that lost what the original knew of the retain set. The
engine's part below the MLflow layer: no MLflow import.

The names below are loaded on first use (PEP 562): the gate's configuration and the table's rows are read by the
MLflow layer and the registry plugin without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Assessment": "assessment",
    "assess": "assessment",
    "evaluation_split": "assessment",
    "incompetent_copy": "assessment",
    "check_not_collapsed": "collapse",
    "GateConfig": "gate",
    "GateResult": "gate",
    "apply_gate": "gate",
    "build_gate_config": "gate",
    "membership_columns": "membership",
    "report_losses": "membership",
    "METRIC_ROWS": "rows",
    "ORIGINAL_ROW": "rows",
    "RETRAIN_ROW": "rows",
    "UNLEARNED_ROW": "rows",
}

__all__ = [
    "METRIC_ROWS",
    "ORIGINAL_ROW",
    "RETRAIN_ROW",
    "UNLEARNED_ROW",
    "Assessment",
    "GateConfig",
    "GateResult",
    "apply_gate",
    "assess",
    "build_gate_config",
    "check_not_collapsed",
    "evaluation_split",
    "incompetent_copy",
    "membership_columns",
    "report_losses",
]

if TYPE_CHECKING:
    from mlflow_unlearn.assess.assessment import Assessment, assess, evaluation_split, incompetent_copy
    from mlflow_unlearn.assess.collapse import check_not_collapsed
    from mlflow_unlearn.assess.gate import GateConfig, GateResult, apply_gate, build_gate_config
    from mlflow_unlearn.assess.membership import membership_columns, report_losses
    from mlflow_unlearn.assess.rows import METRIC_ROWS, ORIGINAL_ROW, RETRAIN_ROW, UNLEARNED_ROW


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
