"""The MLflow layer: the plan, the ``unlearn`` API, lineage, vocabulary, model formats, report and CLI.

Every door (API, CLI, ``mlflow run``, the registry plugin) calls :func:`~mlflow_unlearn.tracking.plan.prepare`,
which checks a request once and returns a frozen :class:`~mlflow_unlearn.tracking.plan.UnlearnPlan`; tag keys,
metric rows, reference options and the default method come from :mod:`mlflow_unlearn.tracking.vocabulary`.

Everything that touches MLflow lives here; the engine (``data``, ``models``, ``training``, ``methods``,
``metrics``, ``assess``) never imports it. The modules that the registry plugin and the CLI import first
(``vocabulary``, ``keys``, ``experiments``, ``provenance``, ``cli``) load no torch; the others import what they use
at their top, so that their dependencies can be read there.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["TrainOutcome", "UnlearnOutcome", "UnlearnPlan", "cancel_request", "evaluate_version", "prepare",
           "project_dir", "train_model", "unlearn"]
_LAZY = {"TrainOutcome": "api", "UnlearnOutcome": "api", "evaluate_version": "api", "train_model": "api",
         "unlearn": "api", "UnlearnPlan": "plan", "prepare": "plan", "cancel_request": "requests"}


def project_dir() -> Path:
    """The folder holding the packaged ``MLproject`` and ``conda.yaml``, usable as ``mlflow run <dir>``.

    >>> (project_dir() / "MLproject").is_file()
    True
    """
    return Path(__file__).resolve().parent.parent / "project"


def __getattr__(name: str):
    if name in _LAZY:

        return getattr(importlib.import_module(f"mlflow_unlearn.tracking.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mlflow_unlearn.tracking' has no attribute {name!r}")
