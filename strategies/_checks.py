"""Checks of the strategies' constructor arguments, shared by the one-shot and the multi-trial strategies.

Each raises an error whose message names the strategy, the argument, the value and what is accepted.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Sequence

__all__ = ["check_number", "check_choice", "check_flag", "unexpected_keyword"]


def _range_text(minimum: float, strict: bool, maximum: float | None, strict_maximum: bool) -> str:
    if maximum is None:
        return f"{'>' if strict else '>='} {minimum}"
    return f"in {'(' if strict else '['}{minimum}, {maximum}{')' if strict_maximum else ']'}"


def check_number(owner: str, name: str, value: Any, *, minimum: float = 0, strict: bool = False,
                 maximum: float | None = None, strict_maximum: bool = False, integer: bool = False,
                 optional: bool = False) -> None:
    """Check a numeric constructor argument of strategy ``owner``: a finite number (an integer when
    ``integer``, NumPy's included; ``bool`` is refused), or ``None`` when ``optional``, within
    ``[minimum, maximum]`` (a bound is excluded when ``strict`` / ``strict_maximum``; ``maximum=None``
    leaves it open).

    Raises ``TypeError`` for a wrong type and ``ValueError`` for a value out of range; both messages
    name ``owner``, ``name``, the value and the accepted range, e.g.
    ``DrNAS: warmup_epochs must be >= 0, got -1``.
    """
    if value is None and optional:
        return
    bounds = _range_text(minimum, strict, maximum, strict_maximum)
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be {'an integer' if integer else 'a finite number'} {bounds}"
                        f"{' or None' if optional else ''}, got {value!r}")
    if (value < minimum or (strict and value == minimum)
            or (maximum is not None and (value > maximum or (strict_maximum and value == maximum)))):
        raise ValueError(f"{owner}: {name} must be {bounds}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, allowed: Sequence[str]) -> None:
    """``ValueError`` naming ``owner`` and ``name`` unless ``value`` is one of the strings ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {tuple(allowed)}, got {value!r}")


def check_flag(owner: str, name: str, value: Any) -> None:
    """``TypeError`` naming ``owner`` and ``name`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")


def unexpected_keyword(owner: str, name: str, accepted: Sequence[str]) -> TypeError:
    """``TypeError: <owner>() got an unexpected keyword argument '<name>'``, with the closest accepted
    name and the list of accepted ones."""
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}; it accepts {', '.join(accepted)}")
