"""The configs of one unlearning: the method's, the gate's and the retrain reference's, from what a user passed.

A user passes a method config as None, a mapping, the method's config dataclass or a YAML file (which may
hold a ``gate:`` section of thresholds); :func:`load_config` splits it, :func:`method_config` validates the
method's part, :func:`gate_config` merges the gate's part with explicit overrides, and
:func:`retrain_config` rebuilds the recipe a registered version was trained with (its ``train.*`` params),
so that a ``retrain`` reference is trained the way the original was.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlflow_unlearn.assess.gate import GateConfig, build_gate_config
from mlflow_unlearn.data.grammar import parse_flag
from mlflow_unlearn.methods import build_config, get_method
from mlflow_unlearn.tracking.vocabulary import RETRAIN_METHOD

#: Prefix of the training-recipe params a version's run logs (and its descendants inherit).
TRAIN_PARAM_PREFIX = "train."


class ConfigError(ValueError):
    """The method config (a mapping or a YAML file) is missing, malformed or invalid."""


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} not found; pass a YAML file of method hyperparameters")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ConfigError(f"Malformed config YAML {str(path)!r}{at}: {getattr(exc, 'problem', exc)}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"Expected the config YAML {str(path)!r} to hold a mapping of hyperparameters "
                          f"(key: value lines) but got a {type(loaded).__name__}")
    return loaded


def load_config(config: Any) -> tuple[Any, dict[str, Any] | None]:
    """Split ``config`` into the method config and the optional ``gate`` section.

    Args:
        config: None or ``""`` (defaults), a mapping, a method config dataclass, or a path to a YAML file
            holding a mapping of method hyperparameters (and optionally ``gate:`` thresholds).

    Returns:
        ``(method_config, gate_overrides)``.

    Raises:
        ConfigError: missing file, malformed YAML, or not a mapping.

    >>> load_config({"epochs": 2, "gate": {"max_test_drop": 3}})
    ({'epochs': 2}, {'max_test_drop': 3})
    >>> load_config("")
    (None, None)
    """
    if config is None or (isinstance(config, str) and not config.strip()):
        return None, None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config, None
    if isinstance(config, (str, os.PathLike)):
        config = _read_yaml(Path(config))
    if not isinstance(config, Mapping):
        raise ConfigError(f"Expected `config` to be a mapping, a config dataclass or a YAML path but got "
                          f"{type(config).__name__}")
    config = dict(config)
    gate = config.pop("gate", None)
    if gate is not None and not isinstance(gate, Mapping):
        raise ConfigError(f"Expected the `gate` section of the config to be a mapping but got {type(gate).__name__}")
    return config, (dict(gate) if gate is not None else None)


def method_config(method: str, config: Any) -> Any:
    """The validated config dataclass of ``method`` (None: its defaults).

    Raises:
        ConfigError: unknown keys or invalid values (the message lists the accepted keys).
        ValueError: an unknown method.
    """
    get_method(method)
    try:
        return build_config(method, config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def gate_config(gate: GateConfig | Mapping[str, Any] | None, from_file: Mapping[str, Any] | None) -> GateConfig:
    """The gate thresholds: ``gate`` itself if it is a :class:`GateConfig`, else the config file's ``gate:``
    section overridden key by key by the mapping ``gate``.

    Raises:
        ValueError: unknown keys or invalid thresholds.

    >>> gate_config({"max_test_drop": 2}, {"max_test_drop": 9, "max_retain_drop": 1}).to_dict()["max_test_drop"]
    2.0
    """
    if isinstance(gate, GateConfig):
        return gate
    return build_gate_config({**(from_file or {}), **dict(gate or {})})


def _coerce(name: str, text: str, default: Any) -> Any:
    """``text`` (the logged param ``name``) as the type of ``default``."""
    if isinstance(default, bool):
        return parse_flag(name, text, what="param")
    if isinstance(default, int):
        return int(float(text))
    if isinstance(default, float):
        return float(text)
    return text


def retrain_config(recipe: Mapping[str, str]) -> Any:
    """The ``retrain`` method's config from the inherited ``train.*`` params (defaults where absent)."""
    spec = get_method(RETRAIN_METHOD)
    defaults = spec.config_cls()
    overrides = {f.name: _coerce(TRAIN_PARAM_PREFIX + f.name, recipe[TRAIN_PARAM_PREFIX + f.name],
                                 getattr(defaults, f.name))
                 for f in dataclasses.fields(spec.config_cls) if TRAIN_PARAM_PREFIX + f.name in recipe}
    return build_config(RETRAIN_METHOD, overrides)
