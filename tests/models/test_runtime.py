"""Launcher environment parsing, parallel-split validation and the CPU mapping."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from megatron_huatuo.runtime.distributed import check_parallel_split, first_slurm_host, read_launch_env


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("node01", "node01"),
        ("gpu[003-005,9],cpu1", "gpu003"),
        ("a1,b2", "a1"),
        ("gpu[12]", "gpu12"),
        ("rack[1-2]-node[01-04]", "rack1-node01"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_bad_nodelist_is_named():
    with pytest.raises(ValueError, match="cannot parse SLURM_JOB_NODELIST 'gpu\\[1-'"):
        first_slurm_host("gpu[1-")


def test_torchrun_environment():
    env = dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="10.0.0.2", MASTER_PORT="1234")
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (3, 8, 1, "torchrun")
    assert (launch.master_addr, launch.master_port) == ("10.0.0.2", 1234)


def test_slurm_environment_uses_first_node_and_default_port():
    env = dict(SLURM_PROCID="5", SLURM_NTASKS="16", SLURM_LOCALID="5", SLURM_JOB_NODELIST="gpu[007-008]")
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (5, 16, 5, "slurm")
    assert (launch.master_addr, launch.master_port) == ("gpu007", 29500)


def test_torchrun_wins_over_slurm_and_bad_integers_are_named():
    env = dict(RANK="0", WORLD_SIZE="2", SLURM_PROCID="7", SLURM_NTASKS="9", SLURM_JOB_NODELIST="n1")
    assert read_launch_env(env).launcher == "torchrun"
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        read_launch_env(dict(RANK="0", WORLD_SIZE="two"))


def test_single_process_defaults():
    launch = read_launch_env({})
    assert (launch.rank, launch.world_size, launch.launcher) == (0, 1, "single")
    assert launch.master_port > 0


def test_parallel_split():
    assert check_parallel_split(16, 2, 4) == 2
    with pytest.raises(ValueError, match="world size 6 is not divisible by .* = 4 x 1 x 1 = 4"):
        check_parallel_split(6, 4, 1)
    with pytest.raises(ValueError, match="virtual_pipeline .* needs pipeline_parallel >= 2"):
        check_parallel_split(2, 2, 1, virtual_pipeline=2)
    with pytest.raises(ValueError, match="tensor_parallel must be a positive integer"):
        check_parallel_split(2, 0, 1)


def test_cpu_mapping_in_a_fresh_interpreter():
    """The mapping is process-global, so it is checked in its own interpreter, not in the test runner."""
    code = textwrap.dedent(
        """
        import torch
        from megatron_huatuo.runtime.cpu import enable_cpu_compat
        assert enable_cpu_compat() and enable_cpu_compat()  # idempotent
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu"
        assert torch.ones(1).to("cuda").device.type == "cpu"
        assert torch.cuda.current_device() == "cpu"
        assert torch.ones(1).type() == "torch.FloatTensor"  # only megatron's optimizer sees CUDA names
        torch.cuda.synchronize()
        import megatron.core.tensor_parallel.random as r
        state = r._get_cuda_rng_state()
        a = torch.rand(3); r._set_cuda_rng_state(state); b = torch.rand(3)
        assert torch.equal(a, b)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_two_processes_initialise_from_slurm_variables():
    import models_harness as H
    from megatron_huatuo.runtime import run_distributed

    results = run_distributed(H.slurm_initialize, world_size=2, args=(2,))
    for rank, r in enumerate(results):
        assert (r["launcher"], r["rank"], r["world"], r["tp"], r["dp"], r["backend"]) == (
            "slurm", rank, 2, 2, 1, "gloo")
        assert r["tp_sum"] == 3.0 and r["sp"]  # 1 + 2 summed over the TP group of both ranks


def test_harness_reports_a_failing_rank_and_kills_a_hanging_one():
    import models_harness as H
    from megatron_huatuo.runtime import run_distributed

    with pytest.raises(RuntimeError, match="(?s)rank 1:.*ValueError: rank one says no"):
        run_distributed(H.fail_on_rank_one, world_size=2)
    with pytest.raises(RuntimeError, match="still running after 3 s; killed"):
        run_distributed(H.fail_on_rank_one, world_size=2, args=(60.0,), timeout=3)
