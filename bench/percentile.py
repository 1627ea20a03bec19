"""The percentile every bench prints its figures with, so that their p50/p99 agree.

Imported by the bench scripts as ``from percentile import pct``.
"""

from __future__ import annotations

__all__ = ["pct"]


def pct(values: list[float], q: float) -> float:
    """The sorted value at index ``int(q * n)`` (the largest for q = 1; NaN for none)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
