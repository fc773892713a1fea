"""Training checkpoints with megatron-core dist_checkpointing.

Layout: ``<dir>/iter_%07d/`` is a dist_checkpointing directory of ``{"model"|"model0","model1",...: sharded
model state, "optimizer": ..., "scheduler": ..., "iteration": ..., "consumed_samples": ..., "rng_state": one
object per rank, "rng_layout": [tp, pp, dp]}``;
``<dir>/latest_checkpointed_iteration.txt`` names the newest *complete* one. The marker is written (tmp file +
``os.replace``) only after every rank has finished the save, so a job killed mid-save resumes from the previous
complete checkpoint and never reads a half-written directory (which is deleted before it is saved again).

Trust (docs/reliability.md): a save refuses a model with a non-finite parameter; each ``iter_*`` directory gets
``huatuo_manifest.json`` (sizes + checksums, ``training/manifest.py``) as its last file, fsynced before the marker
moves; every load checks it first and reads without arbitrary unpickling (``training/dcp_io.py``) unless the
directory is trusted (``checkpoint.trust``). Files are written by the rank's own threads: no helper process.
"""
from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

MARKER = "latest_checkpointed_iteration.txt"
# megatron-core 0.16.1 refuses the default distributed-optimizer format at save; this one reshards on load.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def iteration_dir(root: str, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: Optional[str]) -> Optional[int]:
    """The iteration in the marker, or None (no marker / no directory)."""
    if not root:
        return None
    marker = Path(root) / MARKER
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    try:
        iteration = int(text)
    except ValueError:
        raise ValueError(f"{marker}: expected an iteration number, got {text!r}") from None
    if not iteration_dir(root, iteration).is_dir():
        raise FileNotFoundError(f"{marker} names iteration {iteration} but {iteration_dir(root, iteration)} is missing")
    return iteration


def model_state(chunks: List[torch.nn.Module]) -> dict:
    """``"model"`` for one chunk, ``"model0"``, ``"model1"``... for virtual pipeline stages."""
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _layout() -> List[int]:
    from megatron.core import parallel_state as ps

    return [ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
            ps.get_data_parallel_world_size()]


def capture_rng() -> dict:
    """This rank's generators: Python, NumPy, torch CPU, CUDA (when present) and megatron-core's tracker.

    The tracker holds the tensor-parallel dropout streams (on CPU, our runtime keeps them as CPU generator states).
    """
    from megatron.core import tensor_parallel

    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def restore_rng(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(state: Optional[dict]):
    """One ``ShardedObject`` per rank (Megatron-LM keeps RNG per rank too: every rank draws its own dropout)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _apply_model_state(loaded: dict, chunks) -> None:
    """The inverse of :func:`model_state`: each chunk takes its loaded entry."""
    if len(chunks) == 1:
        chunks[0].load_state_dict(loaded["model"])
    else:
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}"])


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def save(root: str, iteration: int, chunks, optimizer, scheduler, consumed_samples: int) -> Path:
    """Collective. Refuses (:class:`~megatron_huatuo.training.nonfinite.NonFiniteError`, before anything is written)
    a model with a NaN/Inf parameter on any rank, so ``latest`` never names one."""
    from megatron_huatuo.training import dcp_io, manifest
    from megatron_huatuo.training.nonfinite import check_finite_parameters

    check_finite_parameters(chunks, f"not saving iteration {iteration} to {root}")
    target = iteration_dir(root, iteration)
    if _rank() == 0:
        if target.exists():  # an incomplete earlier attempt at this iteration
            shutil.rmtree(target)
        target.mkdir(parents=True)
    _barrier()
    state = model_state(chunks)
    with _bucket_padding_kept(optimizer):
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=OPTIMIZER_METADATA)
    state["scheduler"] = scheduler.state_dict()
    state["iteration"] = iteration
    state["consumed_samples"] = consumed_samples
    state["rng_layout"] = _layout()
    state["rng_state"] = _rng_sharded(capture_rng())
    dcp_io.save(state, target)
    _barrier()
    manifest.write_manifest(target, distributed=True)  # every rank hashes its own files; rank 0 writes it last
    if _rank() == 0:
        manifest.durable_write_text(Path(root) / MARKER, f"{iteration}\n")
    _barrier()
    return target


def _materialize_adam_state(optimizer) -> None:
    """Give a fresh torch Adam its state (and ``step``) before a distributed-optimizer load.

    megatron-core's DistributedOptimizer reads ``step`` from the inner torch optimizer while building the loading
    template, and a fresh torch Adam has no state yet (AssertionError in ``state_dict``). One inner step with zero
    gradients at lr 0 creates the state without changing any weight; the load then overwrites it.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or not getattr(opt.config, "use_distributed_optimizer", False) or len(inner.state):
            continue
        saved = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        inner.zero_grad()
        for group, lr in zip(inner.param_groups, saved):
            group["lr"] = lr


@contextlib.contextmanager
def _bucket_padding_kept(optimizer):
    """Work around megatron-core (0.16.1 to 0.19.2) writing wrong fully-reshardable distributed-optimizer states
    when the gradient buffer has several buckets (``overlap_grad_reduce``, on by default on CUDA).

    ``get_parameter_state_dp_zero`` gathers each bucket and concatenates them *without* the padding at the end of
    every bucket, but ``sharded_param_state_fully_reshardable`` then slices that tensor with the parameters'
    offsets in the *padded* buffer: every parameter after the first padded bucket gets another parameter's values
    (measured: a two-rank run saved with 20,000-element buckets resumed at a fresh model's loss). With one bucket
    (no overlap) there is no padding in between and nothing changes. For the duration of a state-dict build, the
    gathered tensors are put back at their buckets' offsets, so the slices are right.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(opt, "get_parameter_state_dp_zero", None)
        if original is None or not getattr(opt.config, "use_distributed_optimizer", False):
            continue

        def padded(*args, _opt=opt, _original=original, **kwargs):
            state = _original(*args, **kwargs)
            if state is None:
                return None
            for gbuf_idx, buffer in enumerate(_opt.buffers):
                for world in state[gbuf_idx].values():
                    for key, tensor in list(world.items()):
                        if not isinstance(tensor, torch.Tensor) or tensor.numel() != buffer.numel_unpadded:
                            continue
                        full, start = tensor.new_zeros(buffer.numel), 0
                        for bucket in buffer.buckets:
                            full[bucket.offset:bucket.offset + bucket.numel_unpadded] = \
                                tensor[start:start + bucket.numel_unpadded]
                            start += bucket.numel_unpadded
                        world[key] = full
            return state

        opt.get_parameter_state_dp_zero = padded
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt.get_parameter_state_dp_zero


@contextlib.contextmanager
def _torch_adam_step_kept_aside(optimizer):
    """Work around megatron-core 0.16.1 loading a fully-reshardable distributed-optimizer state into torch Adam.

    Its loader first puts torch Adam's per-parameter ``step`` into the state, then copies every state key from
    the checkpoint's per-parameter tensors, which never hold ``step`` (KeyError 'step'). For the duration of the
    load, each parameter's copy hides ``step`` and puts it back afterwards (value from the checkpoint's common part).
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None or not getattr(opt.config, "use_distributed_optimizer", False):
            continue

        def without_step(model_param, tensors, _opt=opt, _original=original):
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
            state = _opt.optimizer.state[main_param]
            step = state.pop("step", None)
            try:
                _original(model_param, tensors)
            finally:
                if step is not None:
                    state["step"] = step

        opt._set_main_param_and_optimizer_states = without_step
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states
            # The loader also hands every parameter the *same* ``step`` tensor; torch Adam increments each
            # parameter's step in place, so a shared one would advance once per parameter per step.
            for state in opt.optimizer.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].clone()


def load(root: str, iteration: int, chunks, optimizer, scheduler, trust: bool = False) -> dict:
    """Restores model, optimizer and scheduler in place; returns ``{"iteration", "consumed_samples", "rng"}``.

    ``rng`` is this rank's saved generator state for :func:`restore_rng`, which the caller applies right before
    the next step (building the data loader draws from torch's generator). RNG states are per rank, so they come
    back only when the checkpoint was saved with the same TP/PP/DP layout (as in Megatron-LM); after a layout
    change ``rng`` is None and the run continues with freshly seeded generators, which only matters with dropout.

    Collective. The directory is checked against its manifest first and read without arbitrary unpickling;
    ``trust`` lets a directory without manifest through (warning) and unpickles with megatron-core's own loaders.
    """
    from megatron_huatuo.training import dcp_io, manifest

    path = iteration_dir(root, iteration)
    manifest.verify_manifest(path, trust=trust, distributed=True)
    _materialize_adam_state(optimizer)
    template = model_state(chunks)
    with _bucket_padding_kept(optimizer):
        template["optimizer"] = optimizer.sharded_state_dict(template, is_loading=True, metadata=OPTIMIZER_METADATA)
    common = dcp_io.load_common_state_dict(path, trust=trust)
    with_rng = common.get("rng_layout") == _layout()
    if with_rng:
        template["rng_state"] = _rng_sharded(None)
    loaded = dcp_io.load(template, path, trust=trust)
    _apply_model_state(loaded, chunks)
    with _torch_adam_step_kept_aside(optimizer):
        optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    return {"iteration": int(loaded["iteration"]), "consumed_samples": int(loaded["consumed_samples"]),
            "rng": loaded["rng_state"] if with_rng else None}


def load_pretrained(path: str, chunks, trust: bool = False, manifest_checked: bool = False) -> None:
    """Weights only from a dist_checkpointing directory (an import, or a training checkpoint's ``iter_*``),
    resharded to this layout.

    Tensors are found by their global sharded keys, not by the template's dict path, so the ``"model0"``,
    ``"model1"`` entries of virtual pipeline chunks read an import saved under ``"model"``. All chunks are loaded
    in ONE call: megatron-core checks that each shard of a stacked layer tensor is read once per load, and chunk
    by chunk loads fail that check with virtual pipeline stages.

    Collective; manifest and safe loading as in :func:`load` (``manifest_checked``: the caller just verified it).
    """
    from megatron_huatuo.training import dcp_io, manifest

    if not Path(path).is_dir():
        raise FileNotFoundError(f"checkpoint.pretrained: {path} is not a directory")
    if not manifest_checked:
        manifest.verify_manifest(path, trust=trust, distributed=True)
    _apply_model_state(dcp_io.load(model_state(chunks), path, trust=trust), chunks)
