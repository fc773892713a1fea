"""Benchmark: what checkpoint trust costs (manifest hashing, safe loading, the process-free writer).

1. ``hash``: streaming throughput of the candidate checksums on a 256 MiB buffer (CPU seconds), the reason for
   xxh3-128.
2. ``train``: a trainer-style save of a Baichuan2-7B-shaped model (full width and vocabulary, ``--layers`` layers,
   bf16, one process): megatron-core's default ``torch_dist`` writer (forked writers + a Manager process) vs ours
   (``dcp_io.TorchDistSaveStrategy``, threads), then the manifest (hash + fsync every file); the load of the same
   checkpoint through megatron-core's loader vs the safe loader (``dcp_io.load``), and ``verify_manifest``.
3. ``shards`` (``--full``): a full 7B-size shard set (32 layers, 14 GB, the streaming import's 358 files written by
   ``save_streaming`` from generated tensors): save vs ``write_manifest``; the export-style read of every tensor
   (``GroupLoader``) vs ``verify_manifest``; the same files hashed by 2 processes as 2 ranks would.

Times: wall and CPU seconds (this process + reaped children). The machine may be shared: compare CPU seconds.
Usage: python bench/checkpoint_manifest.py [--layers 2] [--full] [--workdir DIR (default $TMPDIR/ckpt_manifest)]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timer:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), self._cpu()
        return self

    @staticmethod
    def _cpu():
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, self._cpu() - self.c

    def __str__(self):
        return f"{self.wall:7.2f} s wall, {self.cpu:7.2f} s CPU"


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def bench_hash():
    import xxhash

    buf = memoryview(os.urandom(256 * 2**20))
    chunk = 8 * 2**20

    def stream(update):
        for i in range(0, len(buf), chunk):
            update(buf[i:i + chunk])

    def crc():
        c = 0
        for i in range(0, len(buf), chunk):
            c = zlib.crc32(buf[i:i + chunk], c)

    print("## checksum throughput (256 MiB in 8 MiB chunks)")
    for name, fn in [("xxh3_128", lambda: stream(xxhash.xxh3_128().update)),
                     ("xxh3_64", lambda: stream(xxhash.xxh3_64().update)),
                     ("crc32 (zlib)", crc),
                     ("sha256", lambda: stream(hashlib.sha256().update)),
                     ("blake2b", lambda: stream(hashlib.blake2b().update))]:
        t0 = time.process_time()
        fn()
        fn()
        cpu = time.process_time() - t0
        print(f"{name:14s} {0.5 / cpu:6.2f} GiB/s per core")


def bench_train(work: Path, layers: int):
    from megatron.core import dist_checkpointing

    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import destroy, initialize
    from megatron_huatuo.training import dcp_io
    from megatron_huatuo.training.manifest import verify_manifest, write_manifest

    arch = get_arch("baichuan2-7b").with_overrides(num_layers=layers)
    initialize()
    with Timer() as t:
        model = build_model(arch, transformer_config(arch, precision="bf16"))
    n = sum(p.numel() for p in model.parameters())
    print(f"\n## trainer-style save, Baichuan2-7B shapes, {layers} layers, {n / 1e9:.2f} B parameters bf16 "
          f"(built in {t})")
    results = {}
    for name, save in [("megatron-core default writer", lambda d: dist_checkpointing.save(
                            {"model": model.sharded_state_dict()}, str(d))),
                       ("dcp_io writer (threads)", lambda d: dcp_io.save({"model": model.sharded_state_dict()}, d))]:
        d = work / name.split()[0]
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        with Timer() as t:
            save(d)
        results[name] = (d, t)
        print(f"save, {name:30s} {t}  ({dir_bytes(d) / 2**30:.2f} GiB)")
    d, t_save = results["dcp_io writer (threads)"]
    with Timer() as t_man:
        write_manifest(d)
    print(f"manifest (hash + fsync)                 {t_man}  -> {t_man.wall / t_save.wall:.1%} of the save's wall, "
          f"{t_man.cpu / t_save.cpu:.1%} of its CPU")
    with Timer() as t_load_mcore:
        dist_checkpointing.load({"model": model.sharded_state_dict()}, str(d))
    with Timer() as t_load_safe:
        dcp_io.load({"model": model.sharded_state_dict()}, d)
    with Timer() as t_verify:
        verify_manifest(d)
    print(f"load, megatron-core loader              {t_load_mcore}")
    print(f"load, dcp_io safe loader                {t_load_safe}  ({t_load_safe.wall / t_load_mcore.wall:.2f}x)")
    print(f"verify_manifest                         {t_verify}  -> {t_verify.wall / t_load_safe.wall:.1%} of the "
          f"load's wall, {t_verify.cpu / t_load_safe.cpu:.1%} of its CPU")
    del model
    destroy()
    for d, _ in results.values():
        shutil.rmtree(d, ignore_errors=True)


def _hash_part(args):
    from megatron_huatuo.training.manifest import hash_file

    d, names = args
    t0 = time.process_time()
    for name in names:
        hash_file(Path(d) / name)
    return time.process_time() - t0


def bench_shards(work: Path):
    import torch

    from checkpoints_tools.streaming import GroupLoader, build_meta_model, model_params, save_streaming
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import destroy, initialize
    from megatron_huatuo.training.manifest import list_files, read_manifest, split_by_size, verify_manifest, \
        write_manifest

    arch = get_arch("baichuan2-7b")
    d = work / "shards"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    initialize()
    model = build_meta_model(arch, torch.bfloat16)

    def source(name):  # a cheap deterministic fill: the writer and the hash see ordinary bytes
        shape = model_params(model)[name].shape
        return torch.full(shape, (hash(name) % 97) / 97.0, dtype=torch.bfloat16)

    with Timer() as t_save:
        save_streaming(model, source, d)
    size = dir_bytes(d)
    print(f"\n## 7B-size shard set: {len(list_files(d))} files, {size / 2**30:.2f} GiB")
    print(f"save (streaming writer)                 {t_save}")
    with Timer() as t_man:
        write_manifest(d)
    print(f"manifest, one process (hash + fsync)    {t_man}  -> {t_man.wall / t_save.wall:.1%} of the save's wall "
          f"({size / 2**30 / t_man.wall:.2f} GiB/s)")
    parts = split_by_size(read_manifest(d)["files"], 2)
    with Timer() as t_par, ProcessPoolExecutor(2) as pool:
        cpu = list(pool.map(_hash_part, [(str(d), p) for p in parts]))
    print(f"the same bytes hashed by 2 processes    {t_par.wall:7.2f} s wall, {sum(cpu):7.2f} s CPU "
          f"({t_man.wall / t_par.wall:.2f}x faster than one)")
    loader = GroupLoader(model, d)
    with Timer() as t_load:
        for name in model_params(model):
            loader(name)
    print(f"read every tensor (GroupLoader, safe)   {t_load}")
    with Timer() as t_verify:
        verify_manifest(d)
    print(f"verify_manifest                         {t_verify}  -> {t_verify.wall / t_load.wall:.1%} of the read's "
          f"wall, {t_verify.cpu / t_load.cpu:.1%} of its CPU")
    destroy()
    shutil.rmtree(d, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also the full 7B shard set (14 GB on disk)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ckpt_manifest"))
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    bench_hash()
    bench_train(work, args.layers)
    if args.full:
        bench_shards(work)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
