"""Accuracy with a Wilson score interval.

The Wilson interval keeps its coverage for small benchmarks and accuracies near 0 or 1, where the normal
approximation (p ± z·sqrt(p(1-p)/n)) collapses to a zero-width or out-of-range interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``total`` trials; (nan, nan) when total is 0."""
    if total < 0 or correct < 0 or correct > total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    z2n = z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(correct: int, total: int, z: float = Z_95) -> Accuracy:
    low, high = wilson_interval(correct, total, z)
    return Accuracy(correct=correct, total=total, low=low, high=high)
