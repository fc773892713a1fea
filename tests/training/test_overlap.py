"""Overlapped data-parallel communication (on by default on CUDA; ``training/performance.py``) on two gloo ranks:
the same losses as blocking communication, and checkpoints saved from multi-bucket buffers while parameter
all-gathers are deferred to the next forward resume exactly. Slow: three 2-process runs (the default suite checks
the checkpoint part alone in test_bucketed_checkpoint.py)."""
from __future__ import annotations

import pytest

import training_harness as H

BASE = ["parallel.tp=1", "parallel.distributed_optimizer=true", "train.global_batch=8", "train.micro_batch=2",
        "schedule.style=constant", "schedule.warmup_fraction=0.0"]  # a 2-step run is a prefix of the 4-step one
OVERLAP = ["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true", "parallel.bucket_size=20000"]


def _losses(overrides):
    codes, outputs = H.run_trainer([*BASE, *overrides], timeout=300)
    assert codes == [0, 0], outputs[0][-3000:]
    return [r["loss"] for r in H.step_records(outputs[1])]


@pytest.mark.slow
def test_overlapped_communication_trains_and_checkpoints_like_blocking(tmp_path):
    blocking = _losses(["train.steps=4"])
    ckpt = f"checkpoint.dir={tmp_path / 'ck'}"
    first = _losses([*OVERLAP, "train.steps=2", ckpt])  # saves at step 2 with the all-gather still pending
    resumed = _losses([*OVERLAP, "train.steps=4", ckpt])
    assert len(blocking) == 4 and len(first) == 2 and len(resumed) == 2
    assert first + resumed == pytest.approx(blocking, rel=2e-6)  # bucketed reduction order
