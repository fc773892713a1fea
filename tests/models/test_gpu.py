"""GPU checks (run with ``-m gpu`` on a CUDA machine): bf16 local spec vs the plain-torch reference, the
Transformer Engine spec vs the local spec from the same weights, and an FP8 (hybrid) forward."""
from __future__ import annotations

import pytest
import torch

import models_harness as H
from models_reference import reference_logits
from megatron_huatuo.models.registry import get_arch
from megatron_huatuo.runtime import run_distributed

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_runs():
    return run_distributed(H.gpu_checks, world_size=1, args=(H.FAMILIES,))[0]


@pytest.mark.parametrize("family", H.FAMILIES)
def test_bf16_local_spec_tracks_reference(gpu_runs, family):
    result = gpu_runs[family]
    expected = reference_logits(get_arch(family), result["weights"], result["tokens"])
    assert (result["local"] - expected).abs().max().item() < 0.02 * expected.abs().max().item() + 0.02


@pytest.mark.parametrize("family", H.FAMILIES)
def test_transformer_engine_spec_matches_local(gpu_runs, family):
    if not gpu_runs["have_te"]:
        pytest.skip("Transformer Engine is not installed")
    result = gpu_runs[family]
    assert (result["te"] - result["local"]).abs().max().item() < 0.02 * result["local"].abs().max().item() + 0.02
    assert torch.isfinite(result["fp8"]).all()
