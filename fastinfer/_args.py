"""Checks of plain numeric arguments shared by the Python API: a wrong type gets a TypeError naming the
argument (not Python's "'<=' not supported between 'float' and 'str'"), a value out of range a ValueError.
bool is refused though Python counts it a number: ``x_scale=True`` is far likelier a mistake than 1.0."""
from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    """An integer (numpy's too), not a bool: the test of every count, size and seed argument (each caller raises
    its own error)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(name: str, value) -> float:
    """value as a float, if it is a real number (numpy scalars included) and not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_fraction(name: str, value) -> float:
    """value as a float in [0, 1] (NaN refused)."""
    v = check_number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v
