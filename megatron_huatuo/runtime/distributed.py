"""Process-group set-up for training under torchrun or Slurm, on GPUs (nccl) or CPUs (gloo).

One entry point, :func:`initialize`, so the trainer, the checkpoint tools and the tests create megatron-core's
model-parallel groups the same way:

1. find this process's rank, world size, local rank and the rendezvous address, from torchrun's environment
   (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or, under ``srun``, from Slurm's
   (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, first host of ``SLURM_JOB_NODELIST``);
2. check that the world size splits into TP x PP x CP x DP before any group is created;
3. pick the backend (nccl with CUDA, gloo without; on CPU the megatron-core CUDA mapping is enabled first);
4. call ``parallel_state.initialize_model_parallel`` and ``model_parallel_cuda_manual_seed``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import numpy as np
import torch

from megatron_huatuo.runtime.cpu import enable_cpu_compat

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as told by the launcher."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


@dataclass(frozen=True)
class ParallelContext:
    """What :func:`initialize` set up; handy for logging and for the trainer's bookkeeping."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    tensor_parallel: int
    pipeline_parallel: int
    virtual_pipeline: Optional[int]
    context_parallel: int
    sequence_parallel: bool
    data_parallel: int
    launcher: str


def _int_env(env: Mapping[str, str], key: str) -> int:
    value = env[key]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """First host name of a Slurm node list such as ``gpu[003-005,9],cpu1`` (-> ``gpu003``).

    ``scontrol show hostnames`` is the authority when it is installed; this parser covers the compressed form
    Slurm writes (prefix, bracketed comma list of numbers or zero-padded ranges, optional suffix).
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM_JOB_NODELIST is empty")
    # The first top-level comma separates hosts; commas inside brackets separate ranges.
    depth = 0
    end = len(nodelist)
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end]
    match = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\](.*)", first)
    if not match:
        if "[" in first or "]" in first:
            raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
        return first
    prefix, ranges, suffix = match.groups()
    head = ranges.split(",")[0].split("-")[0]
    if "[" in suffix:  # e.g. rack[1-2]-node[1-4]: only the first bracket is expanded here
        suffix = first_slurm_host(suffix)
    return f"{prefix}{head}{suffix}"


def _slurm_master_addr(nodelist: str) -> str:
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return first_slurm_host(nodelist)


def read_launch_env(env: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """Rank, world size and rendezvous address from torchrun's or Slurm's environment (torchrun wins)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=_int_env(env, "RANK"),
            world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif "SLURM_JOB_NODELIST" in env or "SLURM_NODELIST" in env:
            addr = _slurm_master_addr(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
        else:
            raise ValueError("under Slurm, neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        return LaunchEnv(
            rank=_int_env(env, "SLURM_PROCID"),
            world_size=_int_env(env, "SLURM_NTASKS"),
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=addr,
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT,
            launcher="slurm",
        )
    # A lone process (a notebook, a unit test): any free local port, so parallel jobs on one machine never collide.
    return LaunchEnv(0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"),
                     _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(), "single")


def check_parallel_split(world_size: int, tensor_parallel: int, pipeline_parallel: int, context_parallel: int = 1,
                         virtual_pipeline: Optional[int] = None) -> int:
    """Return the data-parallel size, or raise ``ValueError`` naming the sizes that do not fit."""
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel),
                        ("context_parallel", context_parallel)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model_parallel = tensor_parallel * pipeline_parallel * context_parallel
    if world_size % model_parallel:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_parallel x pipeline_parallel x context_parallel "
            f"= {tensor_parallel} x {pipeline_parallel} x {context_parallel} = {model_parallel}"
        )
    if virtual_pipeline is not None:
        if virtual_pipeline < 1:
            raise ValueError(f"virtual_pipeline must be a positive integer or None, got {virtual_pipeline!r}")
        if pipeline_parallel < 2 and virtual_pipeline > 1:
            raise ValueError("virtual_pipeline (interleaved schedule) needs pipeline_parallel >= 2")
    return world_size // model_parallel


def initialize(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    virtual_pipeline: Optional[int] = None,
    context_parallel: int = 1,
    sequence_parallel: bool = False,
    seed: int = 1234,
    backend: Optional[str] = None,
    timeout_minutes: int = 30,
) -> ParallelContext:
    """Create torch.distributed's default group (if needed) and megatron-core's model-parallel groups.

    Safe to call when ``torch.distributed`` was already initialised (e.g. by a test harness): the existing
    default group is reused. ``virtual_pipeline`` is the number of model chunks per pipeline stage (None or 1 =
    plain 1F1B). ``sequence_parallel`` creates no group (it is a property of the model config, see
    ``megatron_huatuo.models.provider.transformer_config``); it is validated here (needs TP >= 2) and recorded
    in the returned context so launch code can pass one settings object to both.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        enable_cpu_compat()
    launch = read_launch_env()
    dist = torch.distributed
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        backend = dist.get_backend()
    else:
        rank, world_size = launch.rank, launch.world_size
    check_parallel_split(world_size, tensor_parallel, pipeline_parallel, context_parallel, virtual_pipeline)
    if sequence_parallel and tensor_parallel < 2:
        raise ValueError("sequence_parallel needs tensor_parallel >= 2")

    if on_gpu:
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")

    if not dist.is_initialized():
        backend = backend or ("nccl" if on_gpu else "gloo")
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{_url_host(launch.master_addr)}:{launch.master_port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    vpp = virtual_pipeline if virtual_pipeline and virtual_pipeline > 1 else None
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=context_parallel,
        distributed_timeout_minutes=timeout_minutes,
    )
    # As Megatron-LM does: pipeline stages get distinct seeds; the tracker then derives the TP-rank streams.
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed, force_reset_rng=True)
    return ParallelContext(
        rank=rank,
        world_size=world_size,
        local_rank=launch.local_rank,
        backend=str(backend),
        device=device,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        virtual_pipeline=vpp,
        context_parallel=context_parallel,
        sequence_parallel=sequence_parallel,
        data_parallel=world_size // (tensor_parallel * pipeline_parallel * context_parallel),
        launcher=launch.launcher,
    )


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def destroy() -> None:
    """Tear down megatron-core's groups and the default process group (idempotent)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
