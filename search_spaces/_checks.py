"""Argument checks shared by the model spaces of this package (one clear error per wrong input)."""
from __future__ import annotations

from typing import Any


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is an int >= 1; ``TypeError``/``ValueError`` naming ``owner`` and ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


def boolean(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool; ``TypeError`` naming ``owner`` and ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value
