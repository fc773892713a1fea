"""Run megatron-core on a CPU-only machine (gloo), for tests, CI and laptops.

megatron-core assumes CUDA in a handful of places. Rather than forking or patching its files, this module maps
those assumptions onto the CPU, once, and only when CUDA is unavailable, so the real code paths (tensor parallel
layers, pipeline schedules, DistributedDataParallel, the distributed optimizer, dist_checkpointing) run unchanged:

1. ``torch.cuda.current_device()`` is used to place tensors: it answers ``"cpu"``.
2. The model-parallel RNG tracker saves and restores the CUDA generator state around every ``fork()``: on CPU the
   "CUDA" generator is the default CPU generator, which is what CPU dropout draws from.
3. Literal ``device="cuda"`` arguments, ``Tensor.cuda()``, ``torch.cuda.synchronize()`` and
   ``torch.cuda.current_stream()`` (megatron-core >= 0.17 waits on it before a gradient reduce) (pipeline schedules,
   causal masks, loss reductions, optimizer scalars, dist_checkpointing exchanges) are rewritten to the CPU by a
   ``TorchFunctionMode`` pushed for the process.
4. megatron-core's optimizers sort parameters by ``param.type()`` and reject anything that is not a
   ``torch.cuda.*Tensor``; for calls made from ``megatron.core.optimizer`` only, the mode answers the CUDA name of
   the CPU tensor type, so the distributed optimizer builds its fp32 main-parameter groups on CPU.

Caveat: a mode is popped while its own handler runs, and ``Tensor.backward`` / ``torch.autograd.backward`` are
dispatched through it, so a backward started that way runs unmapped (megatron-core's recomputation then fails on
its "cuda" causal mask). megatron-core's schedules start backward on the autograd engine directly
(``custom_backward``), which keeps the mapping; tests that run backward themselves do the same.

On a machine with CUDA, ``enable_cpu_compat()`` does nothing.
"""
from __future__ import annotations

import logging
import sys
import threading

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_LOCK = threading.Lock()


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # An integer device index means a CUDA device in torch's factory functions.
    return isinstance(device, int) and not isinstance(device, bool)


_CPU_TYPES = ("torch.FloatTensor", "torch.HalfTensor", "torch.BFloat16Tensor")


def _called_from_megatron_optimizer() -> bool:
    """True when the nearest caller outside torch and this module lives in ``megatron.core.optimizer``."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return False
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith("torch") or module == __name__):
            return module.startswith("megatron.core.optimizer")
        frame = frame.f_back
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to the CPU for every torch call made while the mode is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if name in _CPU_TYPES and _called_from_megatron_optimizer():
                return name.replace("torch.", "torch.cuda.", 1)
            return name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda(...) -> the tensor itself
            return args[0]
        if name == "to" and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


class _CpuStream:
    """What ``torch.cuda.current_stream()`` answers on CPU: work is already ordered, so waits are no-ops."""

    def wait_event(self, event) -> None:
        return None

    def wait_stream(self, stream) -> None:
        return None

    def synchronize(self) -> None:
        return None


def _patch_rng_tracker() -> None:
    import megatron.core.tensor_parallel.random as mp_random

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    mp_random._get_cuda_rng_state = get_state
    mp_random._set_cuda_rng_state = set_state


class _SameGeneratorFilter(logging.Filter):
    """On CPU the tracker's "CUDA" generator *is* the CPU generator, so its drift warning is always true."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def enable_cpu_compat() -> bool:
    """Map megatron-core's CUDA assumptions to the CPU. Idempotent; returns True when the mapping is active."""
    global _ENABLED
    if torch.cuda.is_available():
        return False
    with _LOCK:
        if _ENABLED:
            return True
        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
        torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
        # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly, no recursion.
        torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
        torch.cuda.manual_seed_all = lambda seed: None
        torch.cuda.empty_cache = lambda: None
        torch.cuda.current_stream = lambda *a, **k: _CpuStream()
        _patch_rng_tracker()
        logging.getLogger("megatron.core.tensor_parallel.random").addFilter(_SameGeneratorFilter())
        _CudaToCpuMode().__enter__()  # stays pushed for the life of the process
        _ENABLED = True
    return True


def device() -> torch.device:
    """The device this process computes on: its CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
