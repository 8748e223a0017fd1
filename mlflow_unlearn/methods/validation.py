"""Validation helpers for method config dataclasses (messages name the field and the accepted range)."""

from __future__ import annotations

from typing import Any


def check_positive(config: Any, *names: str) -> None:
    """Raise ValueError unless each named field is a positive number (ints stay ints)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"Expected argument `{name}` to be a positive number but got {value!r}")


def check_non_negative(config: Any, *names: str) -> None:
    """Raise ValueError unless each named field is a number >= 0."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Expected argument `{name}` to be a non-negative number but got {value!r}")


def check_fraction(config: Any, *names: str, allow_zero: bool = True) -> None:
    """Raise ValueError unless each named field lies in [0, 1] (or (0, 1] when ``allow_zero`` is False)."""
    for name in names:
        value = getattr(config, name)
        low_ok = value >= 0 if allow_zero else value > 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low_ok and value <= 1):
            bounds = "[0, 1]" if allow_zero else "(0, 1]"
            raise ValueError(f"Expected argument `{name}` to be a fraction in {bounds} but got {value!r}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless the field is one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}")
