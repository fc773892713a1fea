"""Core-attention backends (models/attention) against ``local`` from the same weights, on CPU in fp32.

Two gloo processes run ``models_harness.backend_checks`` once: tiny Baichuan2-7B (RoPE, MHA), tiny Baichuan2-13B
(ALiBi, 6 heads: interleaved slopes, 3 per TP rank) and tiny Yi (RoPE, GQA 8/2), at TP=1 and TP=2 + sequence
parallel + selective recompute, on causal rows and on packed rows of isolated documents with padding. ``sdpa``
must match ``local`` in logits and gradients, ``flex`` in logits (its CPU kernel has no backward). ``local`` itself
is checked against a plain-torch reference and Hugging Face in test_parallel_equivalence / test_hf_reference.
"""
from __future__ import annotations

import pytest

import models_harness as H
from megatron_huatuo.runtime import run_distributed

BACKENDS = ["sdpa", "flex"]


@pytest.fixture(scope="module")
def backend_runs():
    return run_distributed(H.backend_checks, world_size=2, args=(H.FAMILIES, BACKENDS))


@pytest.mark.parametrize("rows", ["causal", "isolated"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", H.FAMILIES)
@pytest.mark.parametrize("tp,sp", [(1, False), (2, True)])
def test_backend_matches_local(backend_runs, tp, sp, family, backend, rows):
    for rank_result in backend_runs:
        r = rank_result[(tp, sp, family, backend, rows)]
        assert r["logit_scale"] > 0.1  # non-trivial logits
        assert r["logit_diff"] <= 1e-5, r
        if backend == "sdpa":
            assert r["grad_scale"] > 1e-3
            assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_scale"]), r


def test_te_rows_are_laid_end_to_end_with_document_boundaries():
    """THD inputs for the te backend (run only where TE exists): documents end where the segment id or the row
    changes (trailing padding is its own span); tokens become one [1, B*S] sequence; pipeline messages follow."""
    import torch

    from megatron_huatuo.models.attention.segments import model_inputs, schedule_shape

    segments = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 0, 1, 1]])
    tokens = torch.arange(12).view(2, 6)
    inputs = model_inputs("te", tokens, tokens.clone(), segments, tokens.clone(), isolated=True)
    params = inputs.packed_seq_params
    assert params.qkv_format == "thd" and params.cu_seqlens_q.tolist() == [0, 2, 5, 6, 10, 12]
    assert params.cu_seqlens_q.dtype == torch.int32 and params.max_seqlen_q == 4
    assert inputs.tokens.shape == (1, 12) and inputs.attention_mask is None
    assert schedule_shape("te", True, 6, 2) == (12, 1) and schedule_shape("sdpa", True, 6, 2) == (6, 2)
    causal = model_inputs("te", tokens, tokens, segments, isolated=False)
    assert causal.packed_seq_params is None and causal.tokens.shape == (2, 6)
