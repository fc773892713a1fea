"""The CPU mapping lets megatron-core's distributed optimizer and dist_checkpointing run on gloo:
one Adam step under TP=2 equals torch's AdamW, and a TP=2 checkpoint loads into TP=1 bit for bit."""
from __future__ import annotations

import pytest
import torch

import models_harness as H
from megatron_huatuo.runtime import run_distributed

LR = 1e-3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("tp2-checkpoint")
    return run_distributed(H.optimizer_and_checkpoint, world_size=2, args=(str(save_dir), "tiny-baichuan2-13b", LR))


class _Info:
    def __init__(self, name, is_tp):
        self.tensor_model_parallel = is_tp
        self.partition_dim = 1 if name.endswith(("linear_proj.weight", "linear_fc2.weight")) else 0


def test_distributed_optimizer_step_matches_torch_adamw(runs):
    for r in runs:
        assert r["update_ok"]
        for name, (before, _) in r["before"].items():
            param = before.clone().requires_grad_(True)
            # megatron-core exempts 1-D parameters (norm weights, biases) from weight decay.
            decay = 0.1 if before.dim() > 1 else 0.0
            opt = torch.optim.AdamW([param], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=decay)
            param.grad = torch.full_like(param, 0.01)
            opt.step()
            torch.testing.assert_close(r["after"][name], param.detach(), rtol=1e-6, atol=1e-7, msg=name)


def test_tp2_checkpoint_loads_into_tp1(runs):
    loaded = runs[0]["loaded"]
    torch.testing.assert_close(runs[1]["loaded"], loaded, rtol=0, atol=0)
    for r in runs:
        for name, (_, is_tp) in r["before"].items():
            expected = H.shard(name, loaded[name], _Info(name, is_tp), r["tp_rank"], 2)
            torch.testing.assert_close(r["after"][name], expected, rtol=0, atol=0, msg=name)
