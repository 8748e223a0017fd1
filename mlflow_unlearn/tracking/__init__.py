"""The MLflow layer: the ``unlearn`` API, lineage, model formats, the audit report, the gate and the CLI.

Everything that touches MLflow lives here; the engine (``data``, ``models``, ``training``, ``methods``,
``metrics``) never imports it. Submodules import MLflow and torch lazily where they can, so that
``import mlflow_unlearn.tracking`` stays cheap for the plugins.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["UnlearnOutcome", "TrainOutcome", "evaluate_version", "project_dir", "train_model", "unlearn"]


def project_dir() -> Path:
    """The folder holding the packaged ``MLproject`` and ``conda.yaml``, usable as ``mlflow run <dir>``.

    >>> (project_dir() / "MLproject").is_file()
    True
    """
    return Path(__file__).resolve().parent.parent / "project"


def __getattr__(name: str):
    if name in ("UnlearnOutcome", "TrainOutcome", "evaluate_version", "train_model", "unlearn"):
        from mlflow_unlearn.tracking import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlflow_unlearn.tracking' has no attribute {name!r}")
