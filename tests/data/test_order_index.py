"""The saved priority order: written by ``build``, memory-mapped by the trainer's dataset, keyed by inputs + seed."""
from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from huatuo_testing import REPO_ROOT
from megatron_huatuo.data import order_index
from megatron_huatuo.data.one_stage import build_one_stage_dataset
from megatron_huatuo.data.priority import priority_order
from preprocessing.dataset.build import BuildConfig, build

PAIRS = REPO_ROOT / "demo" / "rewritten" / "pairs.jsonl"
SFT = REPO_ROOT / "demo" / "sft" / "dialogues.en.sharegpt.jsonl"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("oi") / "ds"
    manifest = build(BuildConfig([str(PAIRS)], [str(SFT)], str(tiny_tokenizer), 256, 11, str(out)))
    return out, manifest


def _reference_rows(out, manifest, seq_length, seed):
    """Order from priority_order and a plain greedy packing written here, over megatron-core's reader."""
    srcs = manifest["sources"]
    readers = [IndexedDataset(str(out / s["prefix"])) for s in srcs]  # kept alive: lengths are views of their mmap
    lengths = np.concatenate([np.array(r.sequence_lengths) for r in readers])
    order = priority_order([s["documents"] for s in srcs], [s["priority"] for s in srcs],
                           [s["epochs"] for s in srcs], seed)
    rows, cur, used = [], [], 0
    for g in order.tolist():
        n = min(int(lengths[g]), seq_length)
        if cur and used + n > seq_length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(g)
        used += n
    rows.append(cur)
    return order, rows


def test_build_saves_the_index_and_the_dataset_maps_it(built):
    out, manifest = built
    files = sorted(p.name for p in (out / "order_index").iterdir())
    assert len(files) == 3 and {f.split(".", 1)[1] for f in files} == {"order.npy", "rows.npy", "json"}
    ds = build_one_stage_dataset(str(out), 256, seed=11)
    assert not ds.index.built and isinstance(ds.order, np.memmap)
    order, rows = _reference_rows(out, manifest, 256, 11)
    assert np.array_equal(np.asarray(ds.order), order)
    assert len(ds) == len(rows)
    for i in (0, len(rows) // 2, len(rows) - 1, len(rows) + 2):  # any sample index, also after wrapping
        assert ds.row_documents(i) == rows[i % len(rows)]


def test_other_seed_is_built_once_then_mapped(built):
    out, manifest = built
    first = build_one_stage_dataset(str(out), 256, seed=12)
    assert first.index.built and isinstance(first.order, np.memmap)
    again = build_one_stage_dataset(str(out), 256, seed=12)
    assert not again.index.built and np.array_equal(np.asarray(again.order), np.asarray(first.order))
    order, rows = _reference_rows(out, manifest, 256, 12)
    assert np.array_equal(np.asarray(again.order), order) and again.row_documents(3) == rows[3]
    assert build_one_stage_dataset(str(out), 128, seed=12).index.key != again.index.key  # seq_length is in the key


def test_key_covers_the_document_lengths_and_priorities(built, tmp_path):
    out, manifest = built
    srcs = manifest["sources"]
    key = order_index.index_key(out, srcs, 256, 11)
    assert order_index.load(out, key) is not None
    changed = [dict(s, priority=s["priority"] * 2) if s["name"] == "sft" else s for s in srcs]
    assert order_index.index_key(out, changed, 256, 11) != key
    assert order_index.index_key(out, srcs, 256, 13) != key
    # A forged index under the right file name but another key is ignored.
    meta = out / "order_index" / f"{key[:16]}.json"
    text = meta.read_text()
    try:
        meta.write_text(text.replace(key, "0" * 64))
        assert order_index.load(out, key) is None
        assert build_one_stage_dataset(str(out), 256, seed=11).index.built  # rebuilt (and saved again)
        assert order_index.load(out, key) is not None
    finally:
        meta.write_text(text)


def _rank(rank, world, store, out, queue):
    import datetime
    import traceback

    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        ds = build_one_stage_dataset(str(out), 256, seed=21)
        queue.put((rank, ds.index.built, isinstance(ds.order, np.memmap), np.asarray(ds.order).tolist()))
        dist.destroy_process_group()
    except BaseException:
        queue.put((rank, "error", traceback.format_exc(), None))


def test_rank_zero_builds_and_the_other_rank_maps_it(built, tmp_path):
    """Two gloo ranks, a seed nobody saved yet: rank 0 computes and saves, rank 1 waits and maps the same order."""
    import multiprocessing as mp

    out, manifest = built
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, tmp_path / "store", out, queue)) for r in range(2)]
    for p in procs:
        p.start()
    import queue as queue_mod

    try:
        results = sorted((queue.get(timeout=180) for _ in procs), key=lambda r: r[0])
    except queue_mod.Empty:
        pytest.fail(f"a rank reported nothing within 180 s; exit codes {[p.exitcode for p in procs]}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    errors = [r[2] for r in results if r[1] == "error"]
    assert not errors, errors[0]
    (_, built0, mapped0, order0), (_, built1, mapped1, order1) = results
    assert built0 and not built1 and mapped0 and mapped1
    assert order0 == order1 == _reference_rows(out, manifest, 256, 21)[0].tolist()
