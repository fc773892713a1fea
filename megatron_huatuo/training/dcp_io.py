"""megatron-core ``torch_dist`` checkpoints read without running code from them, written without helper processes.

Loading. A checkpoint directory is input like any other: a crafted one must not run code in the process that opens
it. On our load paths (resume, ``checkpoint.pretrained``, export, verify) megatron-core 0.16.1 / torch 2.13 unpickle
in four places:

1. ``.metadata``: torch's ``FileSystemReader.read_metadata`` is a plain ``pickle.load`` (any global, any call);
2. ``common.pt``: megatron-core's ``TorchCommonLoadStrategy.load_common`` calls ``torch.load`` without
   ``weights_only`` (weights-only by torch >= 2.6's default, but ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns it off);
3. ShardedObjects inside ``*.distcp`` (the per-rank ``rng_state``, the layers' ``_extra_state``): torch's
   ``DefaultLoadPlanner.load_bytes`` is ``torch.load(..., weights_only=False)``;
4. tensors inside ``*.distcp``: ``torch.load(..., weights_only=True)`` already (safe).

:func:`load`, :func:`load_common_state_dict` and :func:`load_tensors_metadata` run megatron-core's own loaders with
(1) an allow-list unpickler that builds exactly the classes torch's checkpoint metadata consists of, (2) and (3)
``torch.load(weights_only=True)`` plus the NumPy types of the RNG state we save (``np.random.get_state()``). Any
other global is refused with one line naming the file and the global, before it is created. ``trust=True`` (the
``--trust-checkpoint`` flag, ``checkpoint.trust``) runs megatron-core's unrestricted loaders instead, for
checkpoints written by other tools (Megatron-LM's ``args`` namespace in ``common.pt``, for instance).

The hook: megatron-core's ``TorchDistLoadShardedStrategy`` builds its file reader and load planner from two module
globals (``_get_filesystem_reader``, ``MCoreLoadPlanner``); for the duration of one safe call they name the safe
subclasses below, and everything else (shape validation, resharding, factories) stays megatron-core's own.

Saving. megatron-core's default ``torch_dist`` save goes through ``FileSystemWriterAsync``, which on the first save
starts a ``multiprocessing`` Manager (a spawned interpreter, ~300 MB, living as long as the rank) plus a resource
tracker, and forks a writer process per file bucket at every save. After ``kill -9`` of a rank those outlive it
as orphans (and a forked writer can keep writing into a directory the requeued job is re-saving).
:class:`TorchDistSaveStrategy` writes the same format (same key translation and planner, ``__<rank>_<i>.distcp`` +
``.metadata``) with torch's ``FileSystemWriter`` in threads of the rank itself: nothing is left behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed.checkpoint.metadata as dcp_metadata
import torch.distributed.checkpoint.planner as dcp_planner
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import CheckpointingException, ShardedObject
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import StorageMeta

from megatron_huatuo.compat import common_state_loading, save_strategy_base

SaveShardedStrategy = save_strategy_base()  # 0.16's base class, 0.19's torch_dist strategy (compat.py)

TRUST_HINT = "load it with --trust-checkpoint / checkpoint.trust=true only if you trust where it came from"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that asks the unpickler for something outside the allow-list (or is not a pickle)."""


# -- what .metadata may contain: torch.distributed.checkpoint's metadata classes and the torch types in them ------
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in ("Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata",
                 "BytesStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
}
_METADATA_GLOBALS.update({
    ("torch.distributed.checkpoint.planner", name): getattr(dcp_planner, name)
    for name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")  # megatron-core keeps the save plans
})
_METADATA_GLOBALS.update({
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("pathlib", "PosixPath"): __import__("pathlib").PosixPath,  # StorageMeta.checkpoint_id of torch's own writer
    ("pathlib", "PurePosixPath"): __import__("pathlib").PurePosixPath,
})
_METADATA_GLOBALS.update({("torch", name): value for name, value in vars(torch).items()
                          if isinstance(value, torch.dtype)})


def _numpy_rng_globals() -> list:
    """What ``np.random.get_state()`` (saved in every rank's ``rng_state``) pickles to, for NumPy 1.x and 2.x."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        found = _METADATA_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(f"{self.source}: refusing to unpickle {module}.{name} (not a type of torch's "
                                        f"checkpoint metadata); {TRUST_HINT}")
        return found

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.source}: refusing a persistent id in checkpoint metadata; {TRUST_HINT}")


def read_metadata(path) -> dcp_metadata.Metadata:
    """A ``.metadata`` file through the allow-list unpickler."""
    with open(path, "rb") as f:
        try:
            return _MetadataUnpickler(f, str(path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # truncated or not a pickle at all
            raise UnsafeCheckpointError(f"{path}: unreadable checkpoint metadata ({type(err).__name__}: {err})") \
                from None


_GLOBAL_IN_ERROR = re.compile(r"GLOBAL (\S+) was not an allowed global|Unsupported global: GLOBAL (\S+)")


def safe_torch_load(source, what: str, **kwargs):
    """``torch.load(weights_only=True)`` with the RNG state's NumPy types allowed; refusals name ``what``."""
    with torch.serialization.safe_globals(_numpy_rng_globals()):
        try:
            return torch.load(source, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            m = _GLOBAL_IN_ERROR.search(str(err))
            bad = (m.group(1) or m.group(2)) if m else str(err).strip().splitlines()[-1][:200]
            raise UnsafeCheckpointError(f"{what}: refusing to unpickle {bad} (weights-only load allows tensors, "
                                        f"plain containers and the RNG state's NumPy arrays); {TRUST_HINT}") from None


class _SafeReader(FileSystemReader):
    """torch's reader with ``.metadata`` through the allow-list (read once per reader)."""

    def __init__(self, path):
        super().__init__(path)
        self._safe_metadata = None

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        if self._safe_metadata is None:
            metadata = read_metadata(Path(self.path) / ".metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            self._safe_metadata = metadata
        return self._safe_metadata


class _SafeBytes:
    """Planner mixin: byte items (ShardedObjects) unpickled weights-only instead of ``weights_only=False``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = safe_torch_load(value, f"checkpoint object {fqn!r}")
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


class _SafeLoadPlanner(_SafeBytes, mcore_torch.MCoreLoadPlanner):
    pass


class _SafeCommonPlanner(_SafeBytes, DefaultLoadPlanner):
    pass


# megatron-core 0.19+ stores the common state as this ShardedObject inside the torch_dist files (0.16: common.pt)
COMMON_STATE_KEY = ShardedObject("common_state", None, (1,), (0,)).unique_key


def _read_common(checkpoint_dir, trust: bool) -> dict:
    """The common state of either layout, whichever megatron-core is installed: ``common.pt`` (written by 0.16)
    or the ``common_state`` object (0.19). Safe: weights-only unpickling and the allow-listed ``.metadata``;
    ``trust``: unrestricted (Megatron-LM's ``args`` namespace, for instance)."""
    directory = Path(checkpoint_dir)
    legacy = directory / COMMON_STATE_FNAME
    if legacy.exists():
        if trust:
            return torch.load(legacy, map_location="cpu", weights_only=False)
        return safe_torch_load(str(legacy), str(legacy), map_location="cpu")
    reader, planner = (FileSystemReader(str(directory)), DefaultLoadPlanner()) if trust else \
        (_SafeReader(directory), _SafeCommonPlanner())
    if COMMON_STATE_KEY not in reader.read_metadata().state_dict_metadata:
        raise CheckpointingException(f"{directory}: no {COMMON_STATE_FNAME} and no {COMMON_STATE_KEY!r} object in "
                                     f"its .metadata (not a megatron-core dist_checkpointing directory?)")
    state = {COMMON_STATE_KEY: io.BytesIO()}
    try:
        torch.distributed.checkpoint.load(state, storage_reader=reader, planner=planner, no_dist=True)
    except CheckpointException as err:
        raise _unwrapped(err, directory) from None
    return state[COMMON_STATE_KEY][0]  # megatron-core saves a ShardedObject as the list of its ranks' data


@contextlib.contextmanager
def _safe_reading():
    saved = mcore_torch._get_filesystem_reader, mcore_torch.MCoreLoadPlanner
    # 0.16 calls it with (dir, cache_metadata=...), 0.19 also with async_strategy=...: one safe reader for all
    mcore_torch._get_filesystem_reader = lambda checkpoint_dir, *args, **kwargs: _SafeReader(checkpoint_dir)
    mcore_torch.MCoreLoadPlanner = _SafeLoadPlanner
    try:
        with common_state_loading(lambda checkpoint_dir: _read_common(checkpoint_dir, trust=False)) as kwargs:
            yield kwargs
    finally:
        mcore_torch._get_filesystem_reader, mcore_torch.MCoreLoadPlanner = saved


def _preflight(checkpoint_dir) -> None:
    """The backend megatron-core recorded, then ``.metadata`` through the allow-list: a refusal here is one clean
    error (inside torch's collective load the same error comes back wrapped, after a logged fallback attempt)."""
    _check_backend(checkpoint_dir)
    read_metadata(Path(checkpoint_dir) / ".metadata")


def _check_backend(checkpoint_dir) -> None:
    path = Path(checkpoint_dir) / "metadata.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{checkpoint_dir} is not a dist_checkpointing directory ({path}: {err})") from None
    if config.get("sharded_backend") != "torch_dist" or config.get("common_backend", "torch") != "torch":
        backends = f"{config.get('sharded_backend')!r}/{config.get('common_backend')!r}"
        raise UnsafeCheckpointError(f"{path}: backend {backends} is not read by the safe loader (torch_dist/torch "
                                    f"only); {TRUST_HINT}")


def _unwrapped(err: CheckpointException, checkpoint_dir) -> BaseException:
    """torch's collective load wraps each rank's failure; give back ours (every rank raises the same)."""
    for exc, _trace in err.failures.values():
        if isinstance(exc, (UnsafeCheckpointError, CheckpointingException, ValueError, OSError)):
            if isinstance(exc, UnsafeCheckpointError) and str(checkpoint_dir) not in str(exc):
                return UnsafeCheckpointError(f"{checkpoint_dir}: {exc}")
            return exc
    first = next(iter(err.failures.values()))[0]
    return RuntimeError(f"{checkpoint_dir}: checkpoint load failed ({type(first).__name__}: {first})")


def load(sharded_state_dict, checkpoint_dir, trust: bool = False, **kwargs):
    """``dist_checkpointing.load`` with the safe unpicklers (``trust``: megatron-core's own, the common state
    unrestricted too)."""
    if trust:
        with common_state_loading(lambda directory: _read_common(directory, trust=True)) as common:
            return dist_checkpointing.load(sharded_state_dict, str(checkpoint_dir), **common, **kwargs)
    _preflight(checkpoint_dir)
    try:
        with _safe_reading() as common:
            return dist_checkpointing.load(sharded_state_dict, str(checkpoint_dir),
                                           sharded_strategy=mcore_torch.TorchDistLoadShardedStrategy(),
                                           **common, **kwargs)
    except CheckpointException as err:
        raise _unwrapped(err, checkpoint_dir) from None


def load_common_state_dict(checkpoint_dir, trust: bool = False) -> dict:
    """The common (non-sharded) state, from ``common.pt`` or 0.19's ``common_state`` object."""
    if not trust:
        _check_backend(checkpoint_dir)
    return _read_common(checkpoint_dir, trust)


def load_tensors_metadata(checkpoint_dir, trust: bool = False) -> dict:
    if trust:
        return dist_checkpointing.load_tensors_metadata(str(checkpoint_dir))
    _preflight(checkpoint_dir)
    with _safe_reading():
        return dist_checkpointing.load_tensors_metadata(str(checkpoint_dir),
                                                        mcore_torch.TorchDistLoadShardedStrategy())


class TorchDistSaveStrategy(SaveShardedStrategy):
    """megatron-core's ``torch_dist`` v1 format written synchronously by torch's ``FileSystemWriter`` (threads of
    this process; ``thread_count`` files per rank, each fsynced), the translation and planner megatron-core's own.

    Subclasses change the planner (``checkpoints_tools.streaming`` resolves tensors lazily) and the writer layout.
    """

    def __init__(self, thread_count: int = 2, single_file_per_rank: bool = True):
        super().__init__("torch_dist", 1)
        self.thread_count = thread_count
        self.single_file_per_rank = single_file_per_rank

    @property
    def can_handle_sharded_objects(self):
        return True

    def planner(self):
        return mcore_torch.MCoreSavePlanner(dedup_replicated_tensors=False, flatten_state_dict=False)

    def save(self, sharded_state_dict, checkpoint_dir):
        from torch.distributed.checkpoint import save

        flat, _, _ = mcore_torch._replace_state_dict_keys_with_sharded_keys(sharded_state_dict,
                                                                            keep_only_main_replica=True)
        pyt_state_dict = mcore_torch.mcore_to_pyt_state_dict(flat, False)
        writer = FileSystemWriter(str(checkpoint_dir), single_file_per_rank=self.single_file_per_rank,
                                  thread_count=self.thread_count, sync_files=True)
        save(pyt_state_dict, storage_writer=writer, planner=self.planner())


def save(sharded_state_dict, checkpoint_dir, strategy: Optional[SaveShardedStrategy] = None) -> None:
    """``dist_checkpointing.save`` with :class:`TorchDistSaveStrategy` (no helper processes)."""
    dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir),
                            sharded_strategy=strategy or TorchDistSaveStrategy())
