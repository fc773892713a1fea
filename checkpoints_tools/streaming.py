"""Streaming conversion: megatron-core ``torch_dist`` checkpoints written and read a few tensors at a time.

Save (import). The megatron model is built on the ``meta`` device, so its ``sharded_state_dict()`` (keys, global
shapes, offsets, the layer-stacking axis, the SwiGLU split of ``linear_fc1``, the ``_extra_state`` objects) is
megatron-core's own, with no weight memory. ``dist_checkpointing.save`` then runs with
:class:`StreamingSaveStrategy`, a ``torch_dist`` v1 strategy that does what megatron-core's
``TorchDistSaveShardedStrategy`` does (same key translation ``mcore_to_pyt_state_dict``, same ``MCoreSavePlanner``,
torch.distributed.checkpoint ``.metadata`` + ``*.distcp`` files) except two things:

- the planner's ``resolve_data`` produces each write item's tensor when the writer asks for it: the item's
  ``meta`` placeholder is a view of a model parameter; the parameter is found by its storage, its real value
  comes from ``source(name)`` (the HF mapping), and the same view is taken of it;
- the writer is the trainer's (``megatron_huatuo.training.dcp_io.TorchDistSaveStrategy``: torch's synchronous
  ``FileSystemWriter``, no helper processes) with one file per item. megatron-core's async writer stages every
  tensor before writing, and torch's one-file-per-rank mode keeps each written tensor in a dict until the file is
  closed; one file per item keeps one tensor alive.

The result is read by megatron-core's own ``dist_checkpointing.load`` (default ``torch_dist`` strategy) at any
TP/PP, like any checkpoint it wrote itself.

Load (export). :class:`GroupLoader` loads one group of parameters (the embedding, one transformer layer, the final
norm + output layer) with ``dist_checkpointing.load`` of the matching subset of the meta model's sharded state
dict, with fresh buffers in place of the meta tensors, and drops the previous group. It reads through
``dcp_io.load`` (no arbitrary unpickling unless the checkpoint is trusted).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

Source = Callable[[str], torch.Tensor]
_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def build_meta_model(arch, dtype: torch.dtype):
    """A TP1/PP1 ``GPTModel`` of ``arch`` whose weights live on ``meta`` (no memory; the RMSNorm weights, hidden
    size each, are on CPU). Needs ``megatron_huatuo.runtime.initialize`` first."""
    from megatron_huatuo.models.provider import build_model, transformer_config

    config = transformer_config(arch, precision=_PRECISION[dtype], perform_initialization=False,
                                use_cpu_initialization=True)  # no device= argument: torch.device("meta") applies
    with torch.device("meta"):
        return build_model(arch, config)


def model_params(model) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}


class ParamResolver:
    """placeholder tensor (a view of a model parameter) -> the same view of that parameter's real value.

    Views share their base's storage, so the storage identifies the parameter; the view's shape, strides and
    offset are applied to the real (contiguous) tensor. The last ``cache`` real tensors are kept because
    megatron-core splits ``linear_fc1`` (SwiGLU) into two items.
    """

    def __init__(self, params: Dict[str, torch.Tensor], source: Source, cache: int = 2):
        self.params = params
        self.source = source
        self.cache_size = cache
        self._by_storage: Dict[int, str] = {}
        for name, p in params.items():
            if not p.is_contiguous() or p.storage_offset() != 0:
                raise RuntimeError(f"parameter {name} is not a contiguous tensor of its own")
            self._by_storage[p.untyped_storage()._cdata] = name
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.resolved: set = set()

    def real(self, name: str) -> torch.Tensor:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        p = self.params[name]
        t = self.source(name)
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, the megatron model expects {tuple(p.shape)}")
        t = t.to(p.dtype).contiguous()
        self._cache[name] = t
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.resolved.add(name)
        return t

    def __call__(self, placeholder: torch.Tensor) -> torch.Tensor:
        name = self._by_storage.get(placeholder.untyped_storage()._cdata)
        if name is None:
            raise RuntimeError(f"checkpoint item of shape {tuple(placeholder.shape)} is not a view of a parameter")
        return self.real(name).as_strided(placeholder.shape, placeholder.stride(), placeholder.storage_offset())


def _strategy_classes():
    """Defined lazily: megatron-core is imported only when a model is built (CLI errors stay fast)."""
    from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    from megatron_huatuo.training.dcp_io import TorchDistSaveStrategy

    class LazyPlanner(MCoreSavePlanner):
        def __init__(self, resolve: ParamResolver):
            super().__init__(dedup_replicated_tensors=False, flatten_state_dict=False)
            self._resolve = resolve

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            return self._resolve(self.lookup_object(write_item.index))

    class StreamingSaveStrategy(TorchDistSaveStrategy):
        """The trainer's ``torch_dist`` v1 writer with a lazy planner and one file per item."""

        def __init__(self, resolve: ParamResolver):
            super().__init__(thread_count=1, single_file_per_rank=False)
            self.resolve = resolve

        def planner(self):
            return LazyPlanner(self.resolve)

    return StreamingSaveStrategy


def save_streaming(model, source: Source, out: Path) -> None:
    """Write ``{"model": model.sharded_state_dict()}`` of the meta ``model`` to ``out``, every parameter's data
    from ``source(name)``; an error names any parameter the source never produced."""
    from megatron.core import dist_checkpointing

    params = model_params(model)
    resolver = ParamResolver(params, source)
    strategy = _strategy_classes()(resolver)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(out), sharded_strategy=strategy)
    missing = set(params) - resolver.resolved
    if missing:
        raise ValueError(f"no weights written for {sorted(missing)}")


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def _unstacked(sh):
    """A layer's slice of a layer-stacked ShardedTensor (``prepend_axis_num`` > 0) as a plain chunk of the same
    global tensor: same key, offset and global shape, local shape with the stacking axes as size-1 dims.

    megatron-core converts a stacked key to a torch ``ShardedTensor`` that expects, in a one-process world,
    every layer's shard locally; a plain chunk goes through its general (any-chunk) path, so one layer can be
    read alone.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if not isinstance(sh, ShardedTensor) or sh.prepend_axis_num == 0:
        return sh
    shape = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
    return ShardedTensor(key=sh.key, data=sh.data.view(shape), dtype=sh.dtype, local_shape=shape,
                         global_shape=sh.global_shape, global_offset=sh.global_offset,
                         axis_fragmentations=sh.axis_fragmentations, replica_id=sh.replica_id,
                         prepend_axis_num=0, allow_shape_mismatch=sh.allow_shape_mismatch)


def _reshaped(loaded, shapes):
    """``loaded`` (nested dicts/lists of tensors) with every tensor viewed in the matching shape of ``shapes``
    (the unstacked chunks come back with their size-1 stacking axes)."""
    if isinstance(loaded, dict):
        return {k: _reshaped(v, shapes[k]) for k, v in loaded.items()}
    if isinstance(loaded, list):
        return [_reshaped(v, s) for v, s in zip(loaded, shapes)]
    return loaded.view(shapes)


def group_of(name: str) -> str:
    """The load group of a parameter: ``embedding``, ``layer.<i>`` or ``final`` (norm + output layer)."""
    m = _LAYER.match(name)
    if m:
        return f"layer.{int(m.group(1))}"
    return "embedding" if name.startswith("embedding.") else "final"


class GroupLoader:
    """``loader(name) -> tensor`` for a TP1/PP1 parameter of the checkpoint at ``path``, loading a whole group at a
    time (ask in model order: asking for a new group drops the previous one)."""

    def __init__(self, model, path: Path, trust: bool = False):
        self.model = model
        self.path = str(path)
        self.trust = trust  # megatron-core's unrestricted unpickling (see megatron_huatuo.training.dcp_io)
        self.groups: Dict[str, List[str]] = {}
        for name in model_params(model):
            self.groups.setdefault(group_of(name), []).append(name)
        self.current: Optional[str] = None
        self.tensors: Dict[str, torch.Tensor] = {}

    def _load(self, group: str) -> None:
        from megatron.core.dist_checkpointing.dict_utils import (
            dict_list_map_inplace, dict_list_map_outplace, extract_matching_values)
        from megatron.core.dist_checkpointing.mapping import (
            ShardedTensorFactory, apply_factories, apply_factory_merges)

        from megatron_huatuo.training import dcp_io

        self.tensors = {}  # drop the previous group before reading the next
        names = set(self.groups[group])
        subset = {k: v for k, v in self.model.sharded_state_dict().items() if k in names}
        for v in subset.values():  # ShardedTensor or ShardedTensorFactory (fc1): fresh buffers, never the model's
            v.data = torch.empty(v.data.shape, dtype=v.data.dtype)
        # what dist_checkpointing.load does with factories (split, load, merge), done here so that the pieces can
        # be loaded as plain chunks (below) and merged in their own shapes
        factories, _ = extract_matching_values(subset, lambda x: isinstance(x, ShardedTensorFactory))
        apply_factories(subset)
        shapes = dict_list_map_outplace(lambda sh: tuple(sh.local_shape), subset)
        dict_list_map_inplace(_unstacked, subset)
        # a subset reads only some shards of the layer-stacked keys: megatron-core's check that every shard is
        # accessed once describes a whole-model load, so it is off here
        loaded = dcp_io.load({"model": subset}, self.path, trust=self.trust, validate_access_integrity=False)["model"]
        merged = apply_factory_merges(_reshaped(loaded, shapes), factories)
        self.tensors = {k: merged[k] for k in names}
        self.current = group

    def __call__(self, name: str) -> torch.Tensor:
        group = group_of(name)
        if group not in self.groups or name not in self.groups[group]:
            raise KeyError(f"{self.path}: the model has no parameter {name!r}")
        if group != self.current:
            self._load(group)
        return self.tensors[name]
