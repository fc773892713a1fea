"""Differences between the megatron-core (0.16-0.19) and torch releases we support, in one place.

We install on Python 3.10-3.12 with ``megatron-core>=0.16,<0.20``: CI runs Python 3.11 + 0.16.1 (the newest
release for 3.11), ``bench/device_check.sh`` runs Python 3.12 + 0.19.2 on a GPU. Code elsewhere asks this module
instead of testing versions itself, so supporting a new release is one edit here.

What differs (read from both wheels and run with both; docs/models.md):

- megatron-core 0.17+ waits on ``torch.cuda.current_stream()`` before every gradient reduce: a CUDA-only call,
  mapped to a no-op stream by ``runtime/cpu.py`` on CPU machines (no effect on GPUs).
- megatron-core 0.19 logs "GPTModel IS DEPRECATED" (in favour of ``HybridModel``) once per model built; GPTModel
  still works unchanged, and every model is built in ``models/provider.py``, so the move is one file;
  :func:`gpt_model_class` filters that one message out (it went to stderr beside our one-line errors).
- dist_checkpointing: 0.16 has strategy base classes (``strategies.base.SaveShardedStrategy``); 0.19 removed them,
  and ``dist_checkpointing.save`` silently replaces any strategy that is not a ``TorchDistSaveShardedStrategy``
  with its default one (:func:`save_strategy_base`; the streaming import's writer subclasses it).
- dist_checkpointing, common (non-sharded) state: 0.16 writes ``common.pt`` and ``load`` takes a ``common_strategy``;
  0.19 writes it as the ``common_state`` ShardedObject inside the ``*.distcp`` files, has no common strategies, and
  reads it in ``serialization.load_common_state_dict`` through torch's default planner (``weights_only=False``):
  :func:`common_state_loading` puts our reader in either place. ``training/dcp_io.py`` reads both layouts on
  both versions, safely (a 0.19-written checkpoint resumes on 0.16 and the reverse, same losses).
- dist_checkpointing, reader: 0.19's ``_get_filesystem_reader`` takes ``async_strategy`` too, and its
  ``CachedMetadataFileSystemReader`` caches ``.metadata`` per path for the whole process (0.16: per reader), so
  the safe reader derives from torch's ``FileSystemReader`` and caches per reader itself.
- torch: ``scaled_dot_product_attention(enable_gqa=...)`` and ``flex_attention`` exist from torch 2.5.

Last checked 2026-12-03 (Python 3.11, torch 2.13.0 CPU): ``tests/models tests/training tests/checkpoints_tools
tests/eval`` pass on megatron-core 0.16.1 (the venv) and on 0.19.2 (the unpacked wheel + ``triton`` 3.9.0 on
PYTHONPATH: ``bench/mcore_019_check.sh``); counts in docs/models.md.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Tuple

import torch

MCORE_SUPPORTED = ((0, 16), (0, 20))  # [min, max) of megatron-core (major, minor), as pyproject.toml says


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


TORCH_VERSION = _version_tuple(torch.__version__)
SDPA_HAS_ENABLE_GQA = TORCH_VERSION >= (2, 5)


def megatron_core_version() -> Tuple[int, ...]:
    """The installed megatron-core version as a tuple (from the package metadata: megatron-core is not imported;
    a source tree on PYTHONPATH without metadata falls back to its ``package_info``)."""
    from importlib import metadata

    try:
        return _version_tuple(metadata.version("megatron-core"))
    except metadata.PackageNotFoundError:
        from megatron.core.package_info import __version__

        return _version_tuple(__version__)


def check_megatron_core() -> Tuple[int, ...]:
    """The installed version, or ``RuntimeError`` naming it when it is outside the supported range."""
    version = megatron_core_version()
    low, high = MCORE_SUPPORTED
    if not low <= version[:2] < high:
        raise RuntimeError(f"megatron-core {'.'.join(map(str, version))} is not supported: need "
                           f">={low[0]}.{low[1]},<{high[0]}.{high[1]} (pip install 'megatron-core>=0.16,<0.20')")
    return version


class _DropGPTModelDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("GPTModel IS DEPRECATED")


def gpt_model_class() -> type:
    """megatron-core's ``GPTModel``, with 0.19's "GPTModel IS DEPRECATED" warning (logged to stderr at every
    construction, in favour of ``HybridModel``) filtered out: GPTModel works unchanged on 0.19, the move is
    tracked here, and our CLIs' errors stay one line. Other messages of that logger pass."""
    from megatron.core.models.gpt import GPTModel

    gpt_logger = logging.getLogger("megatron.core.models.gpt.gpt_model")
    if not any(isinstance(f, _DropGPTModelDeprecation) for f in gpt_logger.filters):
        gpt_logger.addFilter(_DropGPTModelDeprecation())
    return GPTModel


def save_strategy_base() -> type:
    """The class a custom ``torch_dist`` save strategy must derive from for ``dist_checkpointing.save`` to use it:
    ``SaveShardedStrategy`` (megatron-core 0.16) or ``TorchDistSaveShardedStrategy`` (0.19, which has no base
    classes and swaps any other strategy for its default). Both take ``(backend, version)`` and call ``save``."""
    try:
        from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
    except ImportError:
        from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy as SaveShardedStrategy
    return SaveShardedStrategy


@contextlib.contextmanager
def common_state_loading(read: Callable[[str], dict]) -> Iterator[dict]:
    """Within the block, megatron-core's ``dist_checkpointing.load`` reads a checkpoint's common (non-sharded)
    state with ``read(checkpoint_dir)`` instead of its own unpickling; yields the keyword arguments to pass to it.

    0.16 takes a ``common_strategy`` argument (a ``TorchCommonLoadStrategy``, whose ``load_common`` is ``read``).
    0.19 has no common strategies: ``serialization.load`` calls its module function ``load_common_state_dict``
    (``common.pt`` if present, else the ``common_state`` object through torch's default planner, which unpickles
    with ``weights_only=False``), so that name is swapped for the block and restored after, also on error.
    """
    try:
        from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
    except ImportError:  # 0.19
        TorchCommonLoadStrategy = None
    if TorchCommonLoadStrategy is None:
        from megatron.core.dist_checkpointing import serialization

        saved = serialization.load_common_state_dict
        serialization.load_common_state_dict = read
        try:
            yield {}
        finally:
            serialization.load_common_state_dict = saved
        return

    class _ReadCommon(TorchCommonLoadStrategy):
        def load_common(self, checkpoint_dir):
            return read(checkpoint_dir)

    yield {"common_strategy": _ReadCommon()}
