"""ALiBi slopes and bias against published values and a separately written reference."""
from __future__ import annotations

import math

import pytest
import torch

from models_reference import reference_slopes
from megatron_huatuo.models.alibi import alibi_bias, alibi_slopes, local_alibi_slopes


def test_eight_heads_published_values():
    # Press et al. (2022): for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    assert alibi_slopes(8) == pytest.approx([1 / 2 ** k for k in range(1, 9)], rel=1e-12)


def test_six_heads_interleaved_values():
    # Nearest power of two is 4 (2^-2, 2^-4, 2^-6, 2^-8); the extras are 8-head slopes 0 and 2 (2^-1, 2^-3).
    assert alibi_slopes(6) == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], rel=1e-12)


def test_baichuan2_13b_forty_heads():
    slopes = alibi_slopes(40)
    expected = [2 ** (-k / 4) for k in range(1, 33)] + [2 ** (-(2 * i + 1) / 8) for i in range(8)]
    assert slopes == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("heads", list(range(1, 65)))
def test_matches_reference(heads):
    assert alibi_slopes(heads) == pytest.approx(reference_slopes(heads), rel=1e-12)


@pytest.mark.parametrize("heads,tp", [(40, 1), (40, 2), (40, 4), (40, 8), (6, 2), (32, 4)])
def test_tensor_parallel_shards_concatenate_to_all_heads(heads, tp):
    shards = [local_alibi_slopes(heads, rank, tp) for rank in range(tp)]
    assert all(s.numel() == heads // tp for s in shards)
    torch.testing.assert_close(torch.cat(shards), torch.tensor(alibi_slopes(heads), dtype=torch.float32))


def test_indivisible_heads_are_an_error():
    with pytest.raises(ValueError, match="40 attention heads cannot be split over tensor_parallel=3"):
        local_alibi_slopes(40, 0, 3)


def test_bias_gives_baichuan_probabilities():
    """Our slope*(j-i) and Baichuan's slope*j (same row for every query) give the same softmax."""
    torch.manual_seed(0)
    heads, seq = 6, 12
    slopes = torch.tensor(alibi_slopes(heads))
    scores = torch.randn(heads, seq, seq)
    causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    ours = torch.softmax((scores + alibi_bias(slopes, seq, seq)).masked_fill(causal, -math.inf), -1)
    baichuan_bias = slopes[:, None, None] * torch.arange(seq, dtype=torch.float32)[None, None, :]
    theirs = torch.softmax((scores + baichuan_bias).masked_fill(causal, -math.inf), -1)
    torch.testing.assert_close(ours, theirs)
    # Values: head 0 (slope 1/4), query 5, key 2 -> -3/4.
    assert alibi_bias(slopes, seq, seq)[0, 5, 2].item() == pytest.approx(-0.75)


def test_bias_for_queries_at_the_end_of_the_keys():
    """With fewer queries than keys (incremental decoding) queries are the last positions."""
    slopes = torch.tensor([1.0])
    bias = alibi_bias(slopes, 2, 5)
    torch.testing.assert_close(bias[0], torch.tensor([[-3.0, -2, -1, 0, 1], [-4.0, -3, -2, -1, 0]]))
