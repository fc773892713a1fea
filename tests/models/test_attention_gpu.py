"""GPU checks of the fast path (``-m gpu``; ``bench/device_check.sh`` runs them on the device machine first).

- fp32 (TF32 off): sdpa and flex equal local in logits and gradients (flex's backward exists only on CUDA, so this
  is where its gradients are checked), causal and isolated rows, every tiny family;
- bf16: sdpa and flex track local (loss and gradients) on isolated packed rows;
- compiled flex does not recompile for new document layouts (one kernel for all micro-batches);
- megatron-core's fused SwiGLU / cross-entropy (on by default on CUDA) give the unfused loss and gradients.
"""
from __future__ import annotations

import pytest
import torch

import models_harness as H
from megatron_huatuo.models.registry import get_arch
from megatron_huatuo.runtime import run_distributed

pytestmark = pytest.mark.gpu

# Compiled FlexAttention (Triton) needs head_dim >= 16; tiny-yi has 8, so its GPU twin is twice as wide (same
# 8 query heads / 2 KV groups). Names or ArchSpecs, as the harness takes them.
FAMILIES = ["tiny-baichuan2-7b", "tiny-baichuan2-13b",
            get_arch("tiny-yi").with_overrides(name="tiny-yi-hd16", hidden_size=128)]
NAMES = [f if isinstance(f, str) else f.name for f in FAMILIES]


@pytest.fixture(scope="module")
def fp32_runs():
    return run_distributed(H.backend_checks, world_size=1, args=(FAMILIES, ["sdpa", "flex"], 1234,
                                                                  [(1, False, "none")]))[0]


FLEX_BF16 = ["tiny-baichuan2-13b"]  # ALiBi score_mod + document mask; one more compilation per family otherwise


@pytest.fixture(scope="module")
def fast_path():
    return run_distributed(H.gpu_fast_path_checks, world_size=1, args=(FAMILIES, FLEX_BF16), timeout=600)[0]


@pytest.mark.parametrize("rows", ["causal", "isolated"])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("family", NAMES)
def test_fp32_backend_matches_local_with_gradients(fp32_runs, family, backend, rows):
    r = fp32_runs[(1, False, family, backend, rows)]
    assert r["logit_diff"] <= 1e-4 * max(1.0, r["logit_scale"]), r
    assert r["grad_diff"] <= 1e-3 * max(1.0, r["grad_scale"]), r


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("family", NAMES)
def test_bf16_backend_tracks_local(fast_path, family, backend):
    if backend == "flex" and family not in FLEX_BF16:
        pytest.skip("flex in bf16 is checked on the ALiBi family only (compilation time on the device budget)")
    ours, local = fast_path[family][backend], fast_path[family]["local"]
    assert _rel(ours["loss"], local["loss"]) < 2e-2
    worst = max(_rel(ours["grads"][n], g) for n, g in local["grads"].items())
    assert worst < 5e-2 and all(torch.isfinite(g).all() for g in ours["grads"].values())


@pytest.mark.parametrize("family", FLEX_BF16)
def test_flex_compiles_once_for_all_document_layouts(fast_path, family):
    assert fast_path[family]["flex_recompiled"] is None


@pytest.mark.parametrize("family", NAMES)
def test_fused_kernels_match_unfused(fast_path, family):
    fused, plain = fast_path[family]["fused"], fast_path[family]["unfused"]
    assert _rel(fused["loss"], plain["loss"]) < 1e-5
    assert max(_rel(fused["grads"][n], g) for n, g in plain["grads"].items()) < 1e-4
