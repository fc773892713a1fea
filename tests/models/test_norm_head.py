"""NormHead's row normalisation against plain torch (the module under TP=2 is checked in the parallel test)."""
from __future__ import annotations

import torch

from megatron_huatuo.models.norm_head import normalize_rows


def test_rows_have_unit_norm_and_match_plain_torch():
    torch.manual_seed(0)
    w = torch.randn(50, 16) * 3
    expected = w / torch.sqrt((w * w).sum(dim=1, keepdim=True))
    torch.testing.assert_close(normalize_rows(w), expected)
    torch.testing.assert_close(normalize_rows(w).norm(dim=1), torch.ones(50))


def test_normalising_is_idempotent_so_export_of_raw_or_normalised_weight_agree():
    torch.manual_seed(1)
    w = torch.randn(20, 8)
    torch.testing.assert_close(normalize_rows(normalize_rows(w)), normalize_rows(w))


def test_gradient_matches_plain_torch():
    torch.manual_seed(2)
    h = torch.randn(4, 8)
    w1 = torch.randn(10, 8, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    (h @ normalize_rows(w1).T).square().sum().backward()
    (h @ (w2 / w2.norm(dim=1, keepdim=True)).T).square().sum().backward()
    torch.testing.assert_close(w1.grad, w2.grad)


def test_bf16_weight_is_normalised_in_fp32():
    w = torch.randn(6, 4096, dtype=torch.bfloat16)
    out = normalize_rows(w)
    assert out.dtype == torch.bfloat16
    expected = (w.float() / w.float().norm(dim=1, keepdim=True)).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
