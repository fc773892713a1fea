"""The real trainer CLI (two gloo processes) under faults (docs/reliability.md, "Training and checkpoints"):

- a second trainer on a running trainer's ``checkpoint.dir`` exits 2 on both ranks naming the holder (host, pid);
- ``kill -9`` of a rank mid-run (saving every step) leaves no process it started behind;
- a run whose weights go non-finite skips the NaN steps (logged, ``skipped: true``), stops after
  ``train.max_nonfinite_steps`` with exit 3 and saves nothing.
"""
from __future__ import annotations

import signal
import socket
import time

import psutil
import pytest

import training_harness as H

COMMON = ["parallel.tp=2", "train.global_batch=4", "train.micro_batch=2", "train.seq_length=32"]


def _children(procs) -> set:
    out = set()
    for p in procs:
        try:
            out.update(c.pid for c in psutil.Process(p.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def holder_run(tmp_path_factory):
    """Trainer A (one rank, to spare the CPU) saves every step; trainer B (two ranks) starts on the same directory
    while A is paused; then A gets SIGKILL mid-run. A's children are sampled all along (a save's writers live
    briefly)."""
    tmp = tmp_path_factory.mktemp("holder")
    ckpt = tmp / "ckpt"
    a = H.launch_trainer([*COMMON, "parallel.tp=1", "train.steps=100000", "checkpoint.interval=1",
                          f"checkpoint.dir={ckpt}"], world=1, logs=[tmp / "a0.log"])
    seen: set = set()
    try:
        deadline = time.time() + 240
        while time.time() < deadline and all(p.poll() is None for p in a):
            seen |= _children(a)
            if (ckpt / "latest_checkpointed_iteration.txt").exists():
                break
            time.sleep(0.1)
        assert all(p.poll() is None for p in a), (tmp / "a0.log").read_text()[-3000:]
        for p in a:  # paused while B starts: the lock stays held, the two cores go to B
            p.send_signal(signal.SIGSTOP)
        b = H.launch_trainer([*COMMON, "train.steps=2", f"checkpoint.dir={ckpt}"],
                             logs=[tmp / f"b{r}.log" for r in range(2)])
        b_codes = H.wait_all(b, 240)
        for p in a:
            p.send_signal(signal.SIGCONT)
        marker = ckpt / "latest_checkpointed_iteration.txt"
        first = int(marker.read_text())
        deadline = time.time() + 120
        while time.time() < deadline and int(marker.read_text()) < first + 2:  # a few more saves, then kill
            seen |= _children(a)
            time.sleep(0.05)
        seen |= _children(a)
        for p in a:
            p.send_signal(signal.SIGKILL)
        a_codes = H.wait_all(a, 30)
    finally:
        for p in a:
            if p.poll() is None:
                p.kill()
    time.sleep(1.0)
    survivors = sorted(pid for pid in seen if _alive(pid))
    commands = {}
    for pid in survivors:  # report, then end what the killed ranks left behind (the test fails on them)
        try:
            commands[pid] = " ".join(psutil.Process(pid).cmdline())
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return dict(tmp=tmp, a=a, a_codes=a_codes, b_codes=b_codes, seen=seen, survivors=commands,
                b_logs=[(tmp / f"b{r}.log").read_text() for r in range(2)])


def test_second_trainer_on_the_same_checkpoint_dir_exits_2_naming_the_holder(holder_run):
    assert holder_run["b_codes"] == [2, 2], holder_run["b_logs"][0][-3000:]
    holder = holder_run["a"][0].pid
    for log in holder_run["b_logs"]:
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, log[-3000:]
        assert f"pid {holder} on host {socket.gethostname()}" in errors[0] and "ckpt" in errors[0]
        assert "Traceback" not in log


def test_no_process_outlives_a_killed_rank(holder_run):
    assert holder_run["a_codes"] == [-signal.SIGKILL]
    assert holder_run["survivors"] == {}


def test_nonfinite_steps_are_skipped_then_the_run_stops_without_saving(tmp_path):
    # lr=inf: the first update makes every weight non-finite, so every later step has a NaN loss
    codes, outputs = H.run_trainer([*COMMON, "train.steps=8", "optimizer.lr=inf", "schedule.warmup_fraction=0",
                                    "train.max_nonfinite_steps=2", f"checkpoint.dir={tmp_path / 'ckpt'}"],
                                   timeout=240)
    assert codes == [3, 3], outputs[0][-3000:]
    records = H.step_records(outputs[1])
    assert [r["skipped"] for r in records] == [False, True, True]
    assert [r["nonfinite_skips"] for r in records] == [0, 1, 2]
    assert all(r["loss"] != r["loss"] for r in records[1:])  # NaN, logged as such
    assert "step 2: NaN/Inf loss or gradient norm, update skipped" in outputs[1]
    for out in outputs:
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "2 consecutive steps (2-3)" in errors[0] and "no checkpoint was saved" in errors[0]
    assert list((tmp_path / "ckpt").glob("iter_*")) == []
    assert not (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").exists()
