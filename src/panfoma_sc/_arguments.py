"""Argument checks shared by the tools: a wrong type or range is a ``ValueError`` naming the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["is_integer", "require_flag", "require_integer", "require_number"]


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: the largest seed accepted: seeds feed numpy and torch generators and per-step seeds derived from them
MAX_SEED = 2**32 - 1


def require_integer(
    name: str, value: Any, minimum: int, *, allow_none: bool = False, maximum: int | None = None
) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer in ``[minimum, maximum]`` (or ``None`` when allowed)."""
    if allow_none and value is None:
        return
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        expected += " or None" if allow_none else ""
        msg = f"{name} must be {expected}, got {value!r}."
        raise ValueError(msg)


def require_number(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not valid:
        bound = f"> {low}" if low_open else f">= {low}"
        expected = (
            f"a finite number {bound}" if high is None else f"a number in {'(' if low_open else '['}{low}, {high}]"
        )
        msg = f"{name} must be {expected}, got {value!r}."
        raise ValueError(msg)


def require_flag(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False`` (numpy's bools too); ``None`` is not a flag."""
    if not isinstance(value, bool | np.bool_):
        msg = f"{name} must be True or False, got {value!r}."
        raise ValueError(msg)
