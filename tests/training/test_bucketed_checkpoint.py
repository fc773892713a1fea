"""Distributed-optimizer checkpoints from a multi-bucket gradient buffer (``overlap_grad_reduce``, on by default on
CUDA) come back exactly: megatron-core 0.16-0.19 misplaces every parameter after the first bucket's padding in its
fully-reshardable state, which ``training/checkpointing.py`` corrects (``_bucket_padding_kept``)."""
from __future__ import annotations

import training_harness as H
from megatron_huatuo.runtime import run_distributed


def test_multi_bucket_distributed_optimizer_checkpoint_round_trips(tmp_path):
    for rank in run_distributed(H.bucketed_checkpoint_roundtrip, world_size=2, args=(str(tmp_path / "ck"),)):
        assert rank["buckets"] > 2
        assert rank["load_diff"] == 0.0  # the model as saved
        assert rank["step_diff"] < 1e-6  # and the optimizer state: the next step is the same
