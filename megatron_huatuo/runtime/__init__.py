"""Process groups, device selection and the CPU mapping for megatron-core.

- :func:`enable_cpu_compat` (``runtime/cpu.py``): lets megatron-core run on CPU with gloo; no-op with CUDA.
- :func:`initialize` / :func:`destroy` (``runtime/distributed.py``): groups from torchrun or Slurm environment.
- :func:`run_distributed` (``runtime/spawn.py``): N local gloo processes for tests.
"""
from megatron_huatuo.runtime.cpu import device, enable_cpu_compat
from megatron_huatuo.runtime.distributed import (
    LaunchEnv,
    ParallelContext,
    check_parallel_split,
    destroy,
    initialize,
    read_launch_env,
)
from megatron_huatuo.runtime.spawn import free_port, run_distributed

__all__ = [
    "LaunchEnv",
    "ParallelContext",
    "check_parallel_split",
    "destroy",
    "device",
    "enable_cpu_compat",
    "free_port",
    "initialize",
    "read_launch_env",
    "run_distributed",
]
