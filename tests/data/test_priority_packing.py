"""Priority order and packing against hand computations and an independent sequential simulation."""
from __future__ import annotations

import random

import numpy as np
import pytest

from megatron_huatuo.data.packing import pack_row, plan_packing
from megatron_huatuo.data.priority import priority_order


def test_extreme_priorities_give_the_hand_computed_source_order():
    # Sources 0,1,2 with items {0,1}, {2,3}, {4,5}; priorities so far apart that the draw is effectively by source.
    order = priority_order([2, 2, 2], [1.0, 1e9, 1e18], [1, 1, 2], seed=3)
    assert sorted(order[:4].tolist()) == [4, 4, 5, 5]
    assert sorted(order[4:6].tolist()) == [2, 3]
    assert sorted(order[6:].tolist()) == [0, 1]


def test_each_item_appears_epochs_times_and_seed_is_deterministic():
    a = priority_order([5, 7], [32, 1], [1, 3], seed=11)
    assert np.array_equal(a, priority_order([5, 7], [32, 1], [1, 3], seed=11))
    assert not np.array_equal(a, priority_order([5, 7], [32, 1], [1, 3], seed=12))
    assert np.bincount(a, minlength=12).tolist() == [1] * 5 + [3] * 7


def sequential_reference(sizes, priorities, epochs, rng):
    """The original's process, drawn one item at a time: source k with probability p_k R_k / sum p_j R_j."""
    remaining = [s * e for s, e in zip(sizes, epochs)]
    out = []
    while sum(remaining):
        weights = [p * r for p, r in zip(priorities, remaining)]
        k = rng.choices(range(len(sizes)), weights=weights)[0]
        remaining[k] -= 1
        out.append(k)
    return out


def test_source_shares_match_the_sequential_process():
    sizes, prio, ep = [20, 20], [8.0, 1.0], [1, 2]  # 20 "web-like" items vs 20 SFT items seen twice: 60 draws
    trials = 300
    ours_first = ours_last = ref_first = ref_last = 0.0
    rng = random.Random(0)
    for t in range(trials):
        src = (priority_order(sizes, prio, ep, seed=t) >= 20).astype(int)  # 1 = SFT
        ours_first += src[:6].mean() / trials
        ours_last += src[-6:].mean() / trials
        ref = np.array(sequential_reference(sizes, prio, ep, rng))
        ref_first += ref[:6].mean() / trials
        ref_last += ref[-6:].mean() / trials
    assert ours_first == pytest.approx(ref_first, abs=0.04)
    assert ours_last == pytest.approx(ref_last, abs=0.04)
    assert ours_first < 0.25 and ours_last > 0.9  # SFT is rare early and dominates the end


def test_packing_by_hand():
    lengths = [3, 2, 4, 9]
    plan = plan_packing(lengths, [3, 0, 1, 2], seq_length=6)  # rows hold positions into the order
    assert [r.tolist() for r in plan.rows] == [[0], [1, 2], [3]]
    assert plan.truncated == 1 and plan.tokens == 3 + 2 + 4 + 6
    row = pack_row([(np.array([10, 11, 12]), np.array([0, 1, 1])), (np.array([20, 21]), np.array([0, 1]))],
                   seq_length=6, pad_id=2)
    assert row["tokens"].tolist() == [10, 11, 12, 20, 21, 2]
    assert row["labels"].tolist() == [11, 12, 2, 21, 2, 2]
    assert row["loss_mask"].tolist() == [1, 1, 0, 1, 0, 0]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 0]
    assert row["segment_ids"].tolist() == [0, 0, 0, 1, 1, -1]
    shared = pack_row([(np.array([10, 11, 12]), np.array([0, 1, 1])), (np.array([20, 21]), np.array([0, 1]))],
                      seq_length=6, pad_id=2, isolate=False)
    assert shared["position_ids"].tolist() == [0, 1, 2, 3, 4, 5]
    assert shared["segment_ids"].tolist() == [0, 0, 0, 0, 0, -1]  # padding stays -1
