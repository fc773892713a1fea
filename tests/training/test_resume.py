"""Two gloo processes running the real CLI: 6 steps straight == interrupted by SIGTERM (exit 75) + resumed,
step for step (model, optimizer, scheduler, data position and, with dropout, RNG states), validation losses per
source included; the loss falls on repeated synthetic rows; the checkpoint marker names a complete save."""
from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

import training_harness as H

STEPS = 6
COMMON = [f"train.steps={STEPS}", "train.global_batch=8", "train.micro_batch=2", "train.seq_length=64"]


LAYOUTS = {
    # dropout on: the resumed half only matches if every rank's generators (incl. the TP tracker) are restored
    "tp2-dropout": ["parallel.tp=2", "model.dropout=0.1"],
    # data parallel 2 with megatron-core's distributed optimizer (sharded Adam state, fully reshardable save)
    "dp2-distributed-optimizer": ["parallel.tp=1", "parallel.distributed_optimizer=true"],
    # interleaved pipeline (PP2 x VPP2, GQA tiny-yi): checkpoint holds "model0"/"model1"; slow, outside the default run
    "pp2-vpp2": ["model.arch=tiny-yi", "parallel.tp=1", "parallel.pp=2", "parallel.vpp=2"],
}
SLOW_LAYOUTS = {"pp2-vpp2"}
# resumed at another layout: TP2 -> TP1 x DP2 (model and optimizer resharded; per-rank RNG states start fresh)
RELAYOUT = {"tp2-dropout": ["parallel.tp=1", "model.dropout=0.1"]}


def _valid_dir(root: Path) -> Path:
    """A held-out one-stage dataset of two sources; every document fills more than half a 64-token row, so each
    validation row holds exactly one document (the reference below runs documents alone)."""
    import numpy as np

    if (root / "valid" / "manifest.json").exists():
        return root / "valid"
    rng = np.random.default_rng(3)

    def doc(n):
        return rng.integers(1, 512, n).tolist(), [0] * (n // 3) + [1] * (n - n // 3)

    return H.write_one_stage(root / "valid", {"pairs": [doc(n) for n in (40, 64, 50)], "sft": [doc(n) for n in (33, 60)]})


def _launch(ckpt_dir: Path, log_dir: Path, tag: str, layout=()):
    valid = [f"data.valid_path={_valid_dir(log_dir)}", "train.eval_interval=2"]
    return H.launch_trainer([*COMMON, *valid, *layout, f"checkpoint.dir={ckpt_dir}"],
                            logs=[log_dir / f"{tag}-rank{rank}.log" for rank in range(2)])


def _losses(log_dir: Path, tag: str):
    return H.step_records((log_dir / f"{tag}-rank1.log").read_text())  # rank 1 = last rank logs


def _valid(log_dir: Path, tag: str):
    return H.valid_records((log_dir / f"{tag}-rank1.log").read_text())


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.slow) if name in SLOW_LAYOUTS else name
                                        for name in sorted(LAYOUTS)])
def runs(request, tmp_path_factory):
    layout = LAYOUTS[request.param]
    tmp = tmp_path_factory.mktemp("train")
    straight = _launch(tmp / "ck-straight", tmp, "straight", layout)
    codes_straight = H.wait_all(straight)

    interrupted = _launch(tmp / "ck-resume", tmp, "first", layout)
    deadline = time.time() + 150
    while time.time() < deadline and len(_losses(tmp, "first")) < 2 and all(p.poll() is None for p in interrupted):
        time.sleep(0.05)
    for p in interrupted:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes_first = H.wait_all(interrupted)
    marker = (tmp / "ck-resume" / "latest_checkpointed_iteration.txt").read_text().strip()
    relayout = None
    if request.param in RELAYOUT:  # the same interrupted checkpoint, resumed with another parallel layout
        shutil.copytree(tmp / "ck-resume", tmp / "ck-relayout")
        relayout = H.wait_all(_launch(tmp / "ck-relayout", tmp, "relayout", RELAYOUT[request.param]))

    codes_second = H.wait_all(_launch(tmp / "ck-resume", tmp, "second", layout))
    return dict(tmp=tmp, codes=(codes_straight, codes_first, codes_second), marker=marker, relayout=relayout,
                layout=request.param,
                straight=_losses(tmp, "straight"), first=_losses(tmp, "first"), second=_losses(tmp, "second"),
                valid={tag: _valid(tmp, tag) for tag in ("straight", "first", "second")})


def test_exit_codes(runs):
    straight, first, second = runs["codes"]
    assert straight == [0, 0], (runs["tmp"] / "straight-rank0.log").read_text()[-3000:]
    assert first == [75, 75], (runs["tmp"] / "first-rank0.log").read_text()[-3000:]
    assert second == [0, 0], (runs["tmp"] / "second-rank0.log").read_text()[-3000:]


def test_interrupted_and_resumed_equals_straight(runs):
    first, second = runs["first"], runs["second"]
    assert len(first) < STEPS and int(runs["marker"]) == len(first)
    assert [r["step"] for r in first + second] == list(range(1, STEPS + 1))
    combined = [(r["loss"], r["lr"], r["grad_norm"]) for r in first + second]
    expected = [(r["loss"], r["lr"], r["grad_norm"]) for r in runs["straight"]]
    assert combined == expected


def test_validation_losses_resume_exactly(runs):
    """Validation at steps 2, 4, 6 (eval_interval 2, the last step): the interrupted + resumed run logs the same
    per-source losses as the straight one (validation draws no random numbers, dropout is off in eval mode)."""
    valid = runs["valid"]
    assert [r["step"] for r in valid["straight"]] == [2, 4, 6]
    assert [r["step"] for r in valid["first"] + valid["second"]] == [2, 4, 6]
    assert valid["first"] + valid["second"] == valid["straight"]
    assert set(valid["straight"][0]["sources"]) == {"pairs", "sft"}


def test_validation_loss_matches_documents_run_alone(runs):
    """The logged validation loss per source (packed rows, masked filler rows, micro-batches, DP/TP) equals each
    document run alone through a TP1 model with the final checkpoint's weights."""
    if runs["layout"] != "tp2-dropout":
        pytest.skip("checked on one layout")
    from megatron_huatuo.runtime import run_distributed

    ref = run_distributed(H.reference_valid_losses, world_size=1,
                          args=(str(runs["tmp"] / "ck-straight" / "iter_0000006"), str(runs["tmp"] / "valid")))[0]
    last = runs["valid"]["straight"][-1]
    for name, (loss, tokens) in ref.items():
        assert last["sources"][name]["tokens"] == tokens
        assert last["sources"][name]["loss"] == pytest.approx(loss, abs=1e-5)
    total = sum(loss * n for loss, n in ref.values()) / sum(n for _, n in ref.values())
    assert last["loss"] == pytest.approx(total, abs=1e-5)


def test_loss_decreases_on_repeated_rows(runs):
    losses = [r["loss"] for r in runs["straight"]]
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.2 and losses == sorted(losses, reverse=True), losses


def test_resume_at_another_layout(runs):
    if runs["relayout"] is None:
        pytest.skip(f"layout {runs['layout']} has no re-layout variant")
    log = (runs["tmp"] / "relayout-rank0.log").read_text()
    assert runs["relayout"] == [0, 0], log[-3000:]
    assert "layout changed: RNG states freshly seeded" in log
    resumed = _losses(runs["tmp"], "relayout")
    k = len(runs["first"])
    assert [r["step"] for r in resumed] == list(range(k + 1, STEPS + 1))
    straight = {r["step"]: r for r in runs["straight"]}
    for r in resumed:  # same weights, optimizer and data; only the dropout draws differ
        assert r["lr"] == straight[r["step"]]["lr"]
        assert abs(r["loss"] - straight[r["step"]]["loss"]) < 0.1, (r, straight[r["step"]])
