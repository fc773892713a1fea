"""HuatuoGPT-II priority sampling: the whole training order drawn once, up front.

Every item of source ``k`` has weight ``priority[k]`` and appears ``epochs[k]`` times; the order is one weighted
random permutation without replacement (per draw, source k is chosen with probability p_k·R_k / Σ p_j·R_j,
R = items not yet drawn). It is computed in O(N log N) with exponential keys (Efraimidis–Spirakis): item i gets
key E_i / w_i with E_i ~ Exp(1); sorting keys ascending gives exactly that distribution. Knowledge-rich sources
(high priority) dominate early, SFT (priority 1, 3 epochs) dominates the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence

import numpy as np

# Latest original defaults (commit a213974, 2023-12-15); the older preset was 16/8/4/2/1.
DEFAULT_PRIORITIES: Dict[str, float] = {"web": 32, "literature": 16, "encyclopedia": 8, "books": 4, "book": 4, "sft": 1}
DEFAULT_EPOCHS: Dict[str, int] = {"web": 1, "literature": 1, "encyclopedia": 1, "books": 1, "book": 1, "sft": 3}


@dataclass(frozen=True)
class PrioritySettings:
    """Per-kind priority and epochs; kinds not listed get ``default_priority`` / ``default_epochs``."""

    priorities: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    epochs: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EPOCHS))
    default_priority: float = 1.0
    default_epochs: int = 1

    def priority(self, kind: str) -> float:
        return float(self.priorities.get(kind, self.default_priority))

    def epoch_count(self, kind: str) -> int:
        return int(self.epochs.get(kind, self.default_epochs))


def priority_order(sizes: Sequence[int], priorities: Sequence[float], epochs: Sequence[int], seed: int) -> np.ndarray:
    """Global item indices (source k's items are ``offset_k .. offset_k + sizes[k] - 1``) in training order.

    Each item appears ``epochs[k]`` times. Pure and deterministic in ``seed``.
    """
    if not (len(sizes) == len(priorities) == len(epochs)):
        raise ValueError("sizes, priorities and epochs must have one entry per source")
    if any(p <= 0 for p in priorities) or any(e < 0 for e in epochs) or any(s < 0 for s in sizes):
        raise ValueError("priorities must be > 0, sizes and epochs >= 0")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rng = np.random.default_rng(seed)
    items, keys = [], []
    for k in range(len(sizes)):  # per source: no full-length weight vector is ever materialised
        n = int(sizes[k]) * int(epochs[k])
        items.append(np.tile(np.arange(offsets[k], offsets[k + 1], dtype=np.int64), int(epochs[k])))
        keys.append(rng.standard_exponential(n) / float(priorities[k]))
    items_all = np.concatenate(items) if items else np.zeros(0, np.int64)
    keys_all = np.concatenate(keys) if keys else np.zeros(0)
    del items, keys
    return items_all[np.argsort(keys_all, kind="stable")]
