"""The training loop: provider GPTModel + megatron-core DDP, optimizer, scheduler and pipeline schedules.

Loss: every micro-batch returns ``(sum(loss * mask), sum(mask))`` and the TransformerConfig sets
``calculate_per_token_loss``, so megatron-core adds the token counts over micro-batches and data-parallel
ranks and divides the gradients once: the step optimises sum(loss*mask)/sum(mask) over the *global* batch,
not a mean of per-micro-batch means (which would over-weight short SFT answers).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist

from megatron_huatuo.config.recipe import Recipe, RecipeError, resolve_arch, uses_segment_mask, validate
from megatron_huatuo.training import checkpointing, performance
from megatron_huatuo.training.nonfinite import NonFiniteGuard
from megatron_huatuo.training.schedule import run_micro_batches
from megatron_huatuo.training.signals import EXIT_REQUEUE, StopRequest

PEAK_FLOPS = {"bf16": 989e12, "fp8": 1979e12, "fp32": 67e12}  # H100 SXM dense


@dataclass
class TrainResult:
    exit_code: int
    iteration: int
    losses: List[float]


def model_build_kwargs(recipe: Recipe) -> dict:
    """``build_model`` kwargs (attention backend resolved for this machine), or a ``RecipeError`` naming
    ``model.attention_backend`` (e.g. ``flex`` training on CPU, ``te`` without CUDA)."""
    from megatron_huatuo.models.attention import AttentionBackendError, build_kwargs

    try:
        return build_kwargs(recipe.model.attention_backend, resolve_arch(recipe),
                            isolated=uses_segment_mask(recipe), training=True, fp8=recipe.train.precision == "fp8",
                            attention_dropout=recipe.model.dropout)
    except AttentionBackendError as exc:
        raise RecipeError(f"model.attention_backend: {exc}") from None


def _build(recipe: Recipe, build_kwargs: Optional[dict] = None,
           perf: Optional[performance.PerformanceSettings] = None):
    """Model chunks, DDP wrappers, optimizer and scheduler of ``recipe`` (process groups must exist); the attention
    build kwargs and performance settings default to what :func:`train` resolves for this machine."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_huatuo.models.provider import build_model_chunks, transformer_config

    build_kwargs = build_kwargs if build_kwargs is not None else model_build_kwargs(recipe)
    perf = perf if perf is not None else performance.settings(recipe)
    p, t, o = recipe.parallel, recipe.train, recipe.optimizer
    arch = resolve_arch(recipe)
    precision = "bf16" if t.precision == "fp8" else t.precision
    config = transformer_config(arch, tensor_parallel=p.tp, pipeline_parallel=p.pp, virtual_pipeline=p.vpp,
                                num_layers_in_first_pipeline_stage=p.first_stage_layers,
                                num_layers_in_last_pipeline_stage=p.last_stage_layers,
                                sequence_parallel=p.sp, precision=precision,
                                fp8="hybrid" if t.precision == "fp8" else None, fp8_recipe=t.fp8_recipe,
                                recompute=t.recompute, attention_dropout=recipe.model.dropout,
                                hidden_dropout=recipe.model.dropout, calculate_per_token_loss=True,
                                **performance.fusion_fields(perf.fusions, build_kwargs["transformer_impl"],
                                                            arch.position_embedding == "rope"))
    chunks = build_model_chunks(arch, config, **build_kwargs)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                               use_distributed_optimizer=p.distributed_optimizer,
                                               **performance.ddp_fields(perf))
    models = [DistributedDataParallel(config, ddp_config, chunk) for chunk in chunks]
    config.finalize_model_grads_func = finalize_model_grads
    performance.install_sync_funcs(config, models, perf)
    opt_config = OptimizerConfig(optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
                                 adam_beta1=o.beta1, adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad,
                                 bf16=precision == "bf16", params_dtype=config.params_dtype,
                                 use_distributed_optimizer=p.distributed_optimizer,
                                 overlap_param_gather=perf.overlap_param_gather)
    optimizer = get_megatron_optimizer(opt_config, models)
    warmup = int(recipe.schedule.warmup_fraction * t.steps)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
                                        lr_warmup_steps=warmup, lr_decay_steps=t.steps,
                                        lr_decay_style=recipe.schedule.style, start_wd=o.weight_decay,
                                        end_wd=o.weight_decay, wd_incr_steps=t.steps, wd_incr_style="constant")
    return arch, config, chunks, models, optimizer, scheduler


def record_arch(recipe: Recipe, arch, ckpt_dir: str) -> None:
    """``checkpoint.dir`` records the architecture (``huatuo_checkpoint.json`` + the source config.json), so
    ``checkpoints_tools export/verify`` need no --arch (``validate`` refuses a recipe whose arch differs from a
    recorded one)."""
    from megatron_huatuo.models import hf_config

    if hf_config.recorded_arch(ckpt_dir) is not None:
        return
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    source = recipe.model.hf_config or recipe.checkpoint.pretrained
    if source and not hf_config.source_files(source):
        source = None
    hf_config.record(ckpt_dir, arch, {"arch": recipe.model.arch or arch.name, "source": source}, hf_config=source)


def _check_data(recipe: Recipe, log) -> None:
    """Refuse, before the model is built, a dataset that is truncated or holds ids past the model's vocabulary
    (megatron_huatuo/data/compatibility.py); every rank runs it, so all of them stop with the same one-line error."""
    from megatron_huatuo.data.compatibility import check_dataset_fits
    from megatron_huatuo.runtime import destroy

    vocab, vocab_from = recipe.model.vocab_size, "model.vocab_size"
    if vocab is None:
        arch = resolve_arch(recipe)
        vocab, vocab_from = arch.vocab_size, f"the vocabulary of arch {arch.name}"
    try:
        check_dataset_fits(recipe.data, vocab, vocab_from, log=log)
        if recipe.data.valid_path:
            valid = dataclasses.replace(recipe.data, type="one_stage", path=recipe.data.valid_path, prefixes=[])
            check_dataset_fits(valid, vocab, vocab_from, log=log, what="data.valid_path")
    except BaseException:
        destroy()
        raise


def _validate(valid, models, forward_step, recipe: Recipe, num_micro: int, dev, iteration: int, is_logger: bool,
              writer, log, schedule) -> None:
    """Validation loss per source (``training/validation.py``): one JSON line and TensorBoard scalars."""
    from megatron_huatuo.training.validation import evaluate, overall

    results = evaluate(valid, models, forward_step, eval_iters=recipe.train.eval_iters, num_micro=num_micro,
                       micro_batch=recipe.train.micro_batch, device=dev, schedule_shape=schedule)
    if not is_logger:
        return
    record = dict(step=iteration, loss=round(overall(results), 6),
                  sources={name: {"loss": round(loss, 6), "tokens": n} for name, (loss, n) in results.items()})
    log("valid " + json.dumps(record))
    if writer is not None:
        writer.add_scalar("valid/loss", record["loss"], iteration)
        for name, (loss, _) in results.items():
            writer.add_scalar(f"valid/{name}/loss", loss, iteration)


def _batches(loader_iter, count: int):
    return [next(loader_iter) for _ in range(count)]


class CheckpointDirBusy(RuntimeError):
    """Another live trainer writes ``checkpoint.dir`` (raised on every rank with rank 0's message)."""


def _writer_lock(ckpt_dir: Optional[str]):
    """Rank 0 takes the one-writer lock of ``checkpoint.dir`` for the whole run (``megatron_huatuo/locking.py``);
    when another process holds it, every rank raises :class:`CheckpointDirBusy` with rank 0's message (collective).
    """
    from megatron_huatuo.locking import LockHeld, WriterLock

    if not ckpt_dir:
        return None
    lock, message = None, None
    if dist.get_rank() == 0:
        try:
            lock = WriterLock(ckpt_dir).acquire()
        except LockHeld as exc:
            message = str(exc)
    shared = [message]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        raise CheckpointDirBusy(shared[0])
    return lock


def train(recipe: Recipe, log=print) -> TrainResult:
    """Run (or resume) training described by ``recipe``. Process groups come from torchrun / Slurm env."""
    from megatron.core import parallel_state as ps
    from torch.utils.data import DataLoader

    from megatron_huatuo.data.builder import ResumableDistributedSampler, build_dataset
    from megatron_huatuo.models.attention.segments import model_inputs, schedule_shape
    from megatron_huatuo.runtime import destroy, device, initialize

    p, t = recipe.parallel, recipe.train
    build_kwargs = model_build_kwargs(recipe)  # before any process group: a bad backend exits 2 at once
    backend = build_kwargs["attention_backend"]
    perf = performance.settings(recipe)
    stop = StopRequest()
    ctx = initialize(tensor_parallel=p.tp, pipeline_parallel=p.pp, virtual_pipeline=p.vpp,
                     sequence_parallel=p.sp, seed=t.seed)
    dp = validate(recipe, world_size=dist.get_world_size())
    _check_data(recipe, log if dist.get_rank() == 0 else None)
    ckpt_dir = recipe.checkpoint.dir
    lock = _writer_lock(ckpt_dir)  # held until the finally below (released by the kernel if the process dies)
    arch, config, chunks, models, optimizer, scheduler = _build(recipe, build_kwargs, perf)
    masked = uses_segment_mask(recipe)
    sched_seq, sched_micro = schedule_shape(backend, masked, t.seq_length, t.micro_batch)
    if dist.get_rank() == 0:
        log(f"attention backend {backend} ({recipe.model.attention_backend}); {perf}")
    num_micro = t.global_batch // (t.micro_batch * dp)
    dev = device()

    iteration, consumed, rng = 0, 0, None
    trust = recipe.checkpoint.trust
    if ckpt_dir and dist.get_rank() == 0:
        record_arch(recipe, arch, ckpt_dir)
    latest = checkpointing.latest_iteration(ckpt_dir)
    if latest is not None:
        state = checkpointing.load(ckpt_dir, latest, chunks, optimizer, scheduler, trust=trust)
        iteration, consumed, rng = state["iteration"], state["consumed_samples"], state["rng"]
        if dist.get_rank() == 0:
            log(f"resumed from {checkpointing.iteration_dir(ckpt_dir, latest)} (consumed samples {consumed}; "
                + ("RNG states restored)" if rng is not None else "layout changed: RNG states freshly seeded)"))
    elif recipe.checkpoint.pretrained:
        checkpointing.load_pretrained(recipe.checkpoint.pretrained, chunks, trust=trust)
        optimizer.reload_model_params()  # refresh fp32 main params from the loaded weights
        if dist.get_rank() == 0:
            log(f"loaded pretrained weights from {recipe.checkpoint.pretrained}")

    dataset = build_dataset(recipe.data, t.seq_length, arch.vocab_size, t.seed, num_samples=t.steps * t.global_batch)
    sampler = ResumableDistributedSampler(len(dataset), consumed, t.micro_batch,
                                          ps.get_data_parallel_rank(), dp)
    loader_iter = iter(DataLoader(dataset, batch_size=t.micro_batch, sampler=sampler, num_workers=0))
    valid = None
    if recipe.data.valid_path:
        from megatron_huatuo.training.validation import load_validation_set

        valid = load_validation_set(recipe.data.valid_path, t.seq_length, isolate=masked)

    is_logger = dist.get_rank() == dist.get_world_size() - 1  # last pipeline stage, last DP rank
    writer = None
    if is_logger and recipe.logging.tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(recipe.logging.tensorboard_dir)

    def forward_step(data_iterator, model):
        batch = {k: v.to(dev) for k, v in next(data_iterator).items()}
        inputs = model_inputs(backend, batch["tokens"], batch["position_ids"], batch["segment_ids"],
                              batch["labels"], isolated=masked)
        output = inputs(model)

        def loss_func(per_token):
            loss_mask = batch["loss_mask"].float()
            # [B, S]; the te backend's THD rows come back laid end to end as [1, B*S]
            loss_sum = (per_token.float().reshape(loss_mask.shape) * loss_mask).sum()
            tokens = loss_mask.sum().to(torch.int)
            return loss_sum, tokens, {"lm loss": torch.stack([loss_sum.detach(), loss_mask.sum()])}

        return output, loss_func

    guard = NonFiniteGuard(t.max_nonfinite_steps, f" in {ckpt_dir}" if ckpt_dir else "")
    losses: List[float] = []
    exit_code = 0
    flops_per_token = arch.flops_per_token(t.seq_length)
    if rng is not None:
        checkpointing.restore_rng(rng)  # last, after everything above that draws (the DataLoader's base seed)
    try:
        while iteration < t.steps:
            start = time.perf_counter()
            batches = _batches(loader_iter, num_micro)
            for model in models:
                model.zero_grad_buffer()
            optimizer.zero_grad()
            reduced = run_micro_batches(forward_step, batches, models, (sched_seq, sched_micro), forward_only=False)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler then moves on)
            loss, loss_sum = float("nan"), None
            if ps.is_pipeline_last_stage(ignore_virtual=True):
                totals = torch.stack([r["lm loss"] for r in reduced]).sum(0).to(dev)
                dist.all_reduce(totals, group=ps.get_data_parallel_group())
                loss, loss_sum = (totals[0] / totals[1].clamp(min=1)).item(), totals[0]
            finite = guard.step_is_finite(models, loss_sum, dev)
            if finite:
                update_ok, grad_norm, _ = optimizer.step()
                scheduler.step(increment=1)
            else:  # no update, no scheduler step (as Megatron-LM skips an fp16 overflow); the batch is consumed
                update_ok, grad_norm = False, None
                guard.count_skip()
            iteration += 1
            consumed += t.global_batch
            losses.append(loss)
            elapsed = time.perf_counter() - start
            if is_logger and (iteration % recipe.logging.interval == 0 or iteration == t.steps):
                tokens_s = t.global_batch * t.seq_length / elapsed
                record = dict(step=iteration, loss=round(loss, 6), lr=lr,
                              grad_norm=None if grad_norm is None else float(grad_norm), skipped=not update_ok,
                              nonfinite_skips=guard.total, tokens_per_s=round(tokens_s, 1), step_s=round(elapsed, 3))
                if torch.cuda.is_available():
                    tflops = tokens_s * flops_per_token / dist.get_world_size()
                    record["tflops_per_gpu"] = round(tflops / 1e12, 1)
                    record["mfu"] = round(tflops / PEAK_FLOPS.get(t.precision, PEAK_FLOPS["bf16"]), 4)
                log("train " + json.dumps(record))
                if writer is not None:
                    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                        if record.get(key) is not None and not (isinstance(record[key], float) and math.isnan(record[key])):
                            writer.add_scalar(f"train/{key}", record[key], iteration)
            if valid is not None and (iteration % t.eval_interval == 0 or iteration == t.steps):
                _validate(valid, models, forward_step, recipe, num_micro, dev, iteration, is_logger, writer, log,
                          (sched_seq, sched_micro))
            if not finite:
                if is_logger:
                    log(f"step {iteration}: NaN/Inf loss or gradient norm, update skipped "
                        f"({guard.streak} in a row; the run stops at {t.max_nonfinite_steps})")
                guard.stop_if_exceeded(iteration, latest)  # NonFiniteError after train.max_nonfinite_steps in a row
            interval = recipe.checkpoint.interval
            stopping = stop.agreed()
            if ckpt_dir and (stopping or (interval and iteration % interval == 0) or iteration == t.steps):
                with performance.parameters_gathered(models, perf):
                    checkpointing.save(ckpt_dir, iteration, chunks, optimizer, scheduler, consumed)
                latest = iteration
                if is_logger:
                    log(f"saved checkpoint iteration {iteration}")
            if stopping and iteration < t.steps:
                if dist.get_rank() == 0:
                    log(f"stop signal received: exiting with {EXIT_REQUEUE} after step {iteration}")
                exit_code = EXIT_REQUEUE
                break
    finally:
        if writer is not None:
            writer.close()
        stop.restore()
        if lock is not None:
            lock.release()
        destroy()
        sys.stdout.flush()
    return TrainResult(exit_code=exit_code, iteration=iteration, losses=losses)
