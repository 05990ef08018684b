"""Argument checks shared by the architecture builders (one-line ValueErrors for bad sizes)."""

from __future__ import annotations


def check_size(name: str, value: int) -> int:
    """``value`` if it is a positive integer, else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return value
