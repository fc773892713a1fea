"""The priority order and its packing plan, computed once and saved as ``.npy`` files every rank memory-maps.

Why: drawing the order is O(N log N) and packing it O(N); repeating that on every rank at every start wastes
minutes and memory at HuatuoGPT-II scale. ``build`` saves the index for the manifest's seed and ``seq_length``;
a run with another seed or length builds it once (rank 0 when ``torch.distributed`` is up, the others wait
and map it) and saves it beside the data. Row ``i`` is found in O(1) from the mapped arrays, so a resumed run
starts at any sample index without replaying the order.

Files, in ``<dataset>/order_index/``, named by the first 16 hex digits of the key:
``<key>.order.npy`` (int64 global document ids in training order), ``<key>.rows.npy`` (int64 row starts into the
order, rows + 1 entries), ``<key>.json`` (the full key and packing statistics; written last, so its presence
means the arrays are complete). The key is a SHA-256 of everything the index depends on: algorithm version,
seed, seq_length, and per source its name, document count, priority, epochs and the SHA-256 of its token
``.idx`` (the document lengths). A stale or foreign index never matches and is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from megatron_huatuo.data.packing import PackPlan, plan_packing
from megatron_huatuo.data.priority import priority_order

INDEX_DIR = "order_index"
ALGORITHM = "priority-exponential-keys-v1/greedy-packing-v1"


@dataclass
class OrderIndex:
    order: np.ndarray  # int64 global document ids, memory-mapped when loaded
    plan: PackPlan
    key: str
    built: bool  # True when computed by this process (False: an index saved earlier was mapped)

    @property
    def stats(self) -> dict:
        return {"samples": int(len(self.order)), "packed_rows": self.plan.num_rows, "truncated": self.plan.truncated,
                "tokens": self.plan.tokens}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def index_key(path: str | Path, sources: Sequence[dict], seq_length: int, seed: int) -> str:
    """SHA-256 over what the order and the packing depend on (see the module docstring)."""
    path = Path(path)
    desc = {"algorithm": ALGORITHM, "seed": int(seed), "seq_length": int(seq_length),
            "sources": [{"name": s["name"], "documents": int(s["documents"]), "priority": float(s["priority"]),
                         "epochs": int(s["epochs"]), "idx_sha256": _sha256_file(path / f"{s['prefix']}.idx")}
                        for s in sources]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _paths(path: Path, key: str):
    base = path / INDEX_DIR / key[:16]
    return Path(f"{base}.order.npy"), Path(f"{base}.rows.npy"), Path(f"{base}.json")


def compute(sources: Sequence[dict], lengths: np.ndarray, seq_length: int, seed: int, key: str) -> OrderIndex:
    order = priority_order([s["documents"] for s in sources], [s["priority"] for s in sources],
                           [s["epochs"] for s in sources], seed)
    return OrderIndex(order, plan_packing(lengths, order, seq_length), key, built=True)


def save(path: str | Path, index: OrderIndex) -> None:
    """Write the three files atomically (temporary names, then rename; the json last)."""
    order_p, rows_p, meta_p = _paths(Path(path), index.key)
    order_p.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}"
    for arr, final in ((index.order, order_p), (index.plan.row_starts, rows_p)):
        tmp = final.with_name(final.name + tag)
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr, dtype=np.int64))
        os.replace(tmp, final)
    tmp = meta_p.with_name(meta_p.name + tag)
    tmp.write_text(json.dumps({"key": index.key, "algorithm": ALGORITHM, **index.stats}, indent=2) + "\n")
    os.replace(tmp, meta_p)


def load(path: str | Path, key: str) -> OrderIndex | None:
    """The saved index for ``key`` memory-mapped, or None when absent or not for this key."""
    order_p, rows_p, meta_p = _paths(Path(path), key)
    if not meta_p.exists():
        return None
    try:
        meta = json.loads(meta_p.read_text())
        if meta.get("key") != key:
            return None
        order = np.load(order_p, mmap_mode="r")
        starts = np.load(rows_p, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if len(order) != meta["samples"] or len(starts) != meta["packed_rows"] + 1:
        return None
    return OrderIndex(order, PackPlan(starts, int(meta["truncated"]), int(meta["tokens"])), key, built=False)


def load_or_build(path: str | Path, sources: Sequence[dict], lengths: np.ndarray, seq_length: int,
                  seed: int) -> OrderIndex:
    """Map the saved index, or build it (rank 0 builds and saves when ``torch.distributed`` is initialised).

    Every rank passes exactly one barrier, whatever it finds on disk: only rank 0 looks before the barrier, so a
    fast rank 0 that saves the index cannot make a slower rank skip the barrier rank 0 waits in.
    """
    key = index_key(path, sources, seq_length, seed)
    rank, barrier = _dist()
    built = None
    if rank == 0:
        found = load(path, key)
        if found is not None:
            barrier()
            return found
        try:
            built = compute(sources, lengths, seq_length, seed, key)
        except Exception:
            barrier()  # release the other ranks: they compute, fail the same way and report it themselves
            raise
        try:
            save(path, built)
        except OSError:
            pass  # read-only dataset directory: every rank computes its own copy
    barrier()
    saved = load(path, key)
    if saved is None:
        return built if built is not None else compute(sources, lengths, seq_length, seed, key)
    saved.built = built is not None
    return saved  # the mapped copy: the in-memory arrays are dropped


def _dist():
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.get_rank(), dist.barrier
    except ImportError:
        pass
    return 0, lambda: None
