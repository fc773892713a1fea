"""Work run in a spawned process (module level, so the spawn harness can import it)."""
from __future__ import annotations


def reference_loss(ckpt_dir: str, prefix: str, seq: int, rows: int, seed: int = 5) -> float:
    """Save a fresh tiny model as a weights-only dist_checkpointing directory and return the token-weighted mean
    loss of the trainer's first global batch (rows 0..rows-1), computed in one plain forward at TP1."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_huatuo.data.indexed import IndexedDocumentsDataset
    from megatron_huatuo.data.sample import attention_mask_from_segments
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.manifest import write_manifest

    initialize(seed=seed)
    model = build_model("tiny-baichuan2-7b", transformer_config("tiny-baichuan2-7b"), masked_segments=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, ckpt_dir)
    write_manifest(ckpt_dir)  # what checkpoint.pretrained checks before loading
    ds = IndexedDocumentsDataset([prefix], seq)
    batch = {k: torch.stack([ds[i][k] for i in range(rows)]) for k in ds[0]}
    with torch.no_grad():
        per_token = model(batch["tokens"], batch["position_ids"], attention_mask_from_segments(batch["segment_ids"]),
                          labels=batch["labels"]).float()
    return ((per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum()).item()


# -- the real CLI on two gloo processes -----------------------------------------------------------------------
import json as _json
import os as _os
import subprocess as _subprocess
import sys as _sys
from pathlib import Path as _Path

ROOT = _Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "megatron_huatuo" / "recipes" / "tiny-baichuan2-7b-tp2.yaml"


def launch_trainer(overrides, world: int = 2, logs=None):
    """Each rank as its own process with torchrun-style env (as srun starts them: each gets signals).

    ``logs``: one path per rank to write its output to; without it the output is piped (``communicate``).
    """
    from megatron_huatuo.runtime import free_port

    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(_os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        out = open(logs[rank], "w") if logs else _subprocess.PIPE
        procs.append(_subprocess.Popen(
            [_sys.executable, "-m", "megatron_huatuo.train", "--config", str(TINY_RECIPE), *overrides],
            cwd=ROOT, env=env, stdout=out, stderr=_subprocess.STDOUT, text=True))
    return procs


def run_trainer(overrides, timeout: float, world: int = 2):
    """Run to the end; returns (return codes, each rank's output). Kills what is left on a timeout."""
    procs = launch_trainer(overrides, world)
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outputs


def wait_all(procs, timeout: float = 180):
    """Return codes of ``procs`` waited for ``timeout`` seconds in all; what is still running is then killed."""
    import time

    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def step_records(text: str) -> list:
    """The trainer's per-step ``train {json}`` lines (logged by the last rank)."""
    return [_json.loads(line[len("train "):]) for line in text.splitlines() if line.startswith("train {")]


def valid_records(text: str) -> list:
    """The trainer's ``valid {json}`` lines (validation loss per source, logged by the last rank)."""
    return [_json.loads(line[len("valid "):]) for line in text.splitlines() if line.startswith("valid {")]


def write_one_stage(out, sources: dict, eos_id: int = 0):
    """A one-stage dataset directory (``megatron_huatuo.data.one_stage_format``) from ``{name: [(ids, mask)]}``,
    written with megatron-core's own ``IndexedDatasetBuilder``."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_huatuo.data.one_stage_format import FORMAT_VERSION, MANIFEST, MASK_SUFFIX

    out = _Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, docs in sources.items():
        tok = IndexedDatasetBuilder(str(out / f"{name}.bin"), dtype=np.int32)
        mask = IndexedDatasetBuilder(str(out / f"{name}{MASK_SUFFIX}.bin"), dtype=np.uint8)
        for ids, trained in docs:
            tok.add_item(torch.tensor(ids, dtype=torch.int32))
            tok.end_document()
            mask.add_item(torch.tensor(trained, dtype=torch.uint8))
            mask.end_document()
        tok.finalize(str(out / f"{name}.idx"))
        mask.finalize(str(out / f"{name}{MASK_SUFFIX}.idx"))
        entries.append({"name": name, "kind": name, "prefix": name, "documents": len(docs), "priority": 1,
                        "epochs": 1})
    (out / MANIFEST).write_text(_json.dumps({"format_version": FORMAT_VERSION, "eos_id": eos_id,
                                             "sources": entries}))
    return out


def reference_valid_losses(ckpt_iter_dir: str, valid_dir: str, arch_name: str = "tiny-baichuan2-7b") -> dict:
    """Per source, the token-weighted loss of every validation document run ALONE through a TP1 model with the
    checkpoint's weights (target t+1 counted when its trained flag is set): independent of packing, batching,
    pipeline schedules and data parallelism."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_huatuo.models.inference import tp1_model
    from megatron_huatuo.models.registry import get_arch

    manifest = _json.loads((_Path(valid_dir) / "manifest.json").read_text())
    out = {}
    with tp1_model(ckpt_iter_dir, get_arch(arch_name)) as model:
        for src in manifest["sources"]:
            toks = IndexedDataset(str(_Path(valid_dir) / src["prefix"]))
            masks = IndexedDataset(str(_Path(valid_dir) / (src["prefix"] + "_loss_mask")))
            total, count = 0.0, 0.0
            for i in range(len(toks)):
                ids = torch.tensor(toks[i].astype(np.int64))[None]
                trained = torch.tensor(masks[i].astype(np.float64))
                with torch.no_grad():
                    logits = model(ids[:, :-1], torch.arange(ids.shape[1] - 1)[None], None).double()
                nll = -torch.log_softmax(logits[0], -1).gather(-1, ids[0, 1:, None])[:, 0]
                total += float((nll * trained[1:]).sum())
                count += float(trained[1:].sum())
            out[src["name"]] = (total / count, int(count))
    return out


def bucketed_checkpoint_roundtrip(root: str, bucket_size: int = 20000) -> dict:
    """Run in each of 2 ranks (DP2): a distributed-optimizer Adam step with a multi-bucket gradient buffer (as
    ``overlap_grad_reduce`` makes it), the trainer's ``checkpointing.save``, then ``checkpointing.load`` into a
    freshly initialised model and optimizer. Returns the largest parameter difference after the load and after one
    more identical step (model parameters and optimizer state both come back)."""
    import torch
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training import checkpointing

    def build(seed):
        initialize(seed=seed)
        config = transformer_config("tiny-baichuan2-7b")
        chunks = build_model_chunks("tiny-baichuan2-7b", config)
        ddp = DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=True,
                                            bucket_size=bucket_size, grad_reduce_in_fp32=True)
        models = [DistributedDataParallel(config, ddp, chunk) for chunk in chunks]
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, use_distributed_optimizer=True), models)
        sched = OptimizerParamScheduler(opt, init_lr=1e-2, max_lr=1e-2, min_lr=1e-2, lr_warmup_steps=0,
                                        lr_decay_steps=10, lr_decay_style="constant", start_wd=0.1, end_wd=0.1,
                                        wd_incr_steps=10, wd_incr_style="constant")
        return chunks, models, opt, sched

    def step(models, opt, seed):
        gen = torch.Generator().manual_seed(seed)
        for model in models:
            for param in model.parameters():
                param.main_grad.copy_(torch.randn(param.shape, generator=gen))
        opt.step()

    chunks, models, opt, sched = build(seed=1)
    buckets = sum(len(buffer.buckets) for model in models for buffer in model.buffers)
    step(models, opt, seed=7)
    checkpointing.save(root, 1, chunks, opt, sched, 8)
    saved = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}
    step(models, opt, seed=8)
    stepped = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}

    chunks2, models2, opt2, sched2 = build(seed=2)
    checkpointing.load(root, 1, chunks2, opt2, sched2)
    loaded = {n: p.detach().clone() for n, p in chunks2[0].named_parameters()}
    step(models2, opt2, seed=8)
    return dict(buckets=buckets,
                load_diff=max((loaded[n] - saved[n]).abs().max().item() for n in saved),
                step_diff=max((p.detach() - stepped[n]).abs().max().item() for n, p in chunks2[0].named_parameters()))
