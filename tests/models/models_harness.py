"""Work done inside the spawned gloo processes of the model tests (module-level so ``spawn`` can import it).

One call of :func:`family_checks` per test session runs, for every tiny family, in a 2-process gloo group:

1. TP=1/PP=1 (data parallel 2, same batch on both ranks): a model from a fixed seed; its weights, its logits
   (plain causal, and with a one-segment mask), logits of a packed two-document row and of each document alone,
   and one training step's loss and gradients (DDP, ``get_forward_backward_func``, 4 micro-batches);
2. the same step from the *same weights* under TP=2, TP=2 + sequence parallel, PP=2 (1F1B) and PP=2 x VPP=2
   (interleaved); loss and every rank's gradient shards come back to the test, which compares them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

SEQ = 16
MICRO_BATCH = 2
MICRO_BATCHES = 4
# (tensor_parallel, pipeline_parallel, virtual_pipeline, sequence_parallel, recompute)
PARALLEL_CONFIGS: List[Tuple[int, int, Optional[int], bool, str]] = [
    (1, 1, None, False, "none"),
    (2, 1, None, False, "none"),
    (2, 1, None, True, "none"),
    (1, 2, None, False, "none"),
    (1, 2, 2, False, "none"),
    (2, 1, None, True, "selective"),  # core attention recomputed (ALiBi module inside tensor_parallel.checkpoint)
    (1, 2, None, False, "full"),  # whole layers recomputed, RNG tracker states saved/restored on CPU
]


def make_batches(vocab: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Micro-batches in the trainer's sample format, two packed documents per row."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(MICRO_BATCHES):
        tokens = torch.randint(0, vocab, (MICRO_BATCH, SEQ), generator=gen)
        labels = torch.randint(0, vocab, (MICRO_BATCH, SEQ), generator=gen)
        loss_mask = (torch.rand(MICRO_BATCH, SEQ, generator=gen) > 0.2).float()
        loss_mask[:, 0] = 1.0
        cut = int(torch.randint(3, SEQ - 3, (1,), generator=gen))
        segment_ids = torch.zeros(MICRO_BATCH, SEQ, dtype=torch.long)
        segment_ids[:, cut:] = 1
        positions = torch.arange(SEQ).repeat(MICRO_BATCH, 1)
        positions[:, cut:] -= cut
        batches.append(dict(tokens=tokens, labels=labels, loss_mask=loss_mask, position_ids=positions,
                            segment_ids=segment_ids))
    return batches


def _global_names(chunk) -> Dict[str, torch.nn.Parameter]:
    """Parameters keyed by their TP=1/PP=1 names (local layer index -> global layer number - 1)."""
    offsets = {i: layer.layer_number - 1 for i, layer in enumerate(chunk.decoder.layers)}
    out = {}
    for name, param in chunk.named_parameters():
        if name.startswith("decoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            name = f"decoder.layers.{offsets[int(idx)]}.{rest}"
        out[name] = param
    return out


def shard(name: str, full: torch.Tensor, param, tp_rank: int, tp_size: int) -> torch.Tensor:
    """The slice of a TP=1 tensor that ``param`` holds on ``tp_rank`` (the SwiGLU [gate; up] split per half)."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    if name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def _train_step(arch, tp, pp, vpp, sp, recompute, weights, batches, seed):
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_huatuo.data.sample import attention_mask_from_segments
    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize

    initialize(tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=vpp, seed=seed)
    config = transformer_config(arch, tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=vpp,
                                sequence_parallel=sp, recompute=recompute)
    chunks = build_model_chunks(arch, config, masked_segments=True)
    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    if weights is not None:
        with torch.no_grad():
            for chunk in chunks:
                for name, param in _global_names(chunk).items():
                    param.copy_(shard(name, weights[name], param, tp_rank, tp_size))
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    models = [DistributedDataParallel(config, ddp_config, chunk) for chunk in chunks]
    config.finalize_model_grads_func = finalize_model_grads

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        mask = attention_mask_from_segments(batch["segment_ids"])
        output = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])

        def loss_func(per_token):
            loss = (per_token.float() * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
            return loss, {"loss": loss.detach().clone()}

        return output, loss_func

    iterators = [iter(batches) for _ in models]
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(models) > 1 else iterators[0],
        model=models if len(models) > 1 else models[0],
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=MICRO_BATCH,
        forward_only=False,
    )
    loss = torch.stack([d["loss"] for d in losses]).mean().item() if losses else None
    grads = {}
    for model, chunk in zip(models, chunks):
        for name, param in _global_names(chunk).items():
            grads[name] = (param.main_grad.detach().clone(), getattr(param, "tensor_model_parallel", False))
    return dict(loss=loss, grads=grads, tp_rank=tp_rank, tp_size=tp_size, chunks=chunks)


def _forward_checks(arch, chunk, model_causal_builder):
    """Logits for the reference / packing tests, at TP=1/PP=1."""
    from megatron_huatuo.data.sample import attention_mask_from_segments

    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, arch.vocab_size, (2, SEQ), generator=gen)
    positions = torch.arange(SEQ).repeat(2, 1)
    out = {"tokens": tokens}
    with torch.no_grad():
        causal = model_causal_builder()
        out["logits_causal"] = causal(tokens, positions, None)
        one_segment = attention_mask_from_segments(torch.zeros(2, SEQ, dtype=torch.long))
        out["logits_one_segment"] = chunk(tokens, positions, one_segment)
        cut = 7
        segment_ids = torch.zeros(2, SEQ, dtype=torch.long)
        segment_ids[:, cut:] = 1
        packed_pos = positions.clone()
        packed_pos[:, cut:] -= cut
        out["logits_packed"] = chunk(tokens, packed_pos, attention_mask_from_segments(segment_ids))
        out["logits_first_doc"] = chunk(tokens[:, :cut], positions[:, :cut],
                                        attention_mask_from_segments(torch.zeros(2, cut, dtype=torch.long)))
        rest = SEQ - cut
        out["logits_second_doc"] = chunk(tokens[:, cut:], positions[:, :rest],
                                         attention_mask_from_segments(torch.zeros(2, rest, dtype=torch.long)))
        out["cut"] = cut
    return out


def family_checks(arch_names: List[str], seed: int = 1234) -> Dict[str, dict]:
    """Run in every rank of a 2-process group; returns per-family results (weights/logits from rank 0)."""
    from megatron.core import parallel_state as ps

    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.models.registry import get_arch

    results: Dict[str, dict] = {}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
    for name in arch_names:
        arch = get_arch(name)
        batches = make_batches(arch.vocab_size)
        family: dict = {"steps": {}}
        weights = None
        for tp, pp, vpp, sp, recompute in PARALLEL_CONFIGS:
            step = _train_step(arch, tp, pp, vpp, sp, recompute, weights, batches, seed)
            chunks = step.pop("chunks")
            if (tp, pp, recompute) == (1, 1, "none"):
                chunk = chunks[0]
                weights = {n: p.detach().clone() for n, p in _global_names(chunk).items()}
                family["weights"] = weights
                config = transformer_config(arch)

                def causal_model():
                    model = build_model(arch, config, masked_segments=False)
                    model.load_state_dict(chunk.state_dict())
                    return model

                family.update(_forward_checks(arch, chunk, causal_model))
                # The same weights in bf16 (parameters, activations, pipeline dtype): the mixed-precision path.
                bf16 = build_model(arch, transformer_config(arch, precision="bf16"), masked_segments=False)
                bf16.load_state_dict({k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                      for k, v in chunk.state_dict().items()})
                with torch.no_grad():
                    family["logits_bf16"] = bf16(family["tokens"], torch.arange(SEQ).repeat(2, 1), None).float()
            if tp == 2 and not sp and recompute == "none":
                head = chunks[0].output_layer
                h = torch.randn(SEQ, 2, arch.hidden_size, generator=torch.Generator().manual_seed(3))
                family["norm_head_tp"] = dict(rank=ps.get_tensor_model_parallel_rank(), input=h,
                                              weight=head.weight.detach().clone(),
                                              output=head(h)[0].detach().clone())
            family["steps"][(tp, pp, vpp, sp, recompute)] = step
        results[name] = family
    if rank:  # keep the payload small: weights and logits from rank 0 only
        for family in results.values():
            for key in [k for k in family if k.startswith("logits") or k == "weights"]:
                family.pop(key)
    return results


def optimizer_and_checkpoint(save_dir: str, arch_name: str = "tiny-baichuan2-13b", lr: float = 1e-3) -> dict:
    """On CPU/gloo: one distributed-optimizer Adam step under TP=2, a dist_checkpointing save (model and
    optimizer, fully reshardable), then a load of the model into TP=1 (data parallel 2) in the same processes."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize

    initialize(tensor_parallel=2, seed=11)
    config = transformer_config(arch_name, tensor_parallel=2)
    chunks = build_model_chunks(arch_name, config)
    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True)
    models = [DistributedDataParallel(config, ddp_config, chunk) for chunk in chunks]
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=lr, weight_decay=0.1, use_distributed_optimizer=True), models
    )
    # The scheduler is what writes each group's weight decay (0 for 1-D parameters) into the torch optimizer.
    OptimizerParamScheduler(optimizer, init_lr=lr, max_lr=lr, min_lr=lr, lr_warmup_steps=0, lr_decay_steps=10,
                            lr_decay_style="constant", start_wd=0.1, end_wd=0.1, wd_incr_steps=10,
                            wd_incr_style="constant")
    before = {n: (p.detach().clone(), getattr(p, "tensor_model_parallel", False))
              for n, p in chunks[0].named_parameters()}
    for model in models:
        for param in model.parameters():
            param.main_grad.fill_(0.01)
    update_ok, grad_norm, _ = optimizer.step()
    after = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}
    model_sd = chunks[0].sharded_state_dict()
    state = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(
        model_sd, metadata={"distrib_optim_sharding_type": "fully_reshardable"})}
    dist_checkpointing.save(state, save_dir)
    tp_rank = ps.get_tensor_model_parallel_rank()

    initialize(tensor_parallel=1, seed=11)
    single = build_model_chunks(arch_name, transformer_config(arch_name))[0]
    loaded = dist_checkpointing.load({"model": single.sharded_state_dict()}, save_dir)["model"]
    single.load_state_dict(loaded)
    return dict(update_ok=update_ok, grad_norm=grad_norm, before=before, after=after, tp_rank=tp_rank,
                loaded={n: p.detach().clone() for n, p in single.named_parameters()})


FAMILIES = ["tiny-baichuan2-7b", "tiny-baichuan2-13b", "tiny-yi"]
_FAMILY_RUNS: Dict[tuple, list] = {}


def family_runs(families: Optional[List[str]] = None) -> list:
    """Every rank's :func:`family_checks` result, computed once per test session (shared by test modules)."""
    from megatron_huatuo.runtime import run_distributed

    key = tuple(families or FAMILIES)
    if key not in _FAMILY_RUNS:
        _FAMILY_RUNS[key] = run_distributed(family_checks, world_size=2, args=(list(key),))
    return _FAMILY_RUNS[key]


def slurm_initialize(tensor_parallel: int) -> dict:
    """Initialise from Slurm's variables only (the torchrun ones the harness set are removed first)."""
    import os

    from megatron.core import parallel_state as ps

    from megatron_huatuo.runtime import initialize

    rank = int(os.environ.pop("RANK"))
    world = int(os.environ.pop("WORLD_SIZE"))
    os.environ.pop("LOCAL_RANK")
    os.environ.pop("MASTER_ADDR")
    os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank),
                      SLURM_JOB_NODELIST="localhost")
    ctx = initialize(tensor_parallel=tensor_parallel, sequence_parallel=tensor_parallel > 1)
    total = torch.tensor([float(rank + 1)])
    torch.distributed.all_reduce(total, group=ps.get_tensor_model_parallel_group())
    return dict(launcher=ctx.launcher, rank=ctx.rank, world=ctx.world_size, tp=ctx.tensor_parallel, sp=ctx.sequence_parallel,
                dp=ctx.data_parallel, backend=ctx.backend, tp_sum=total.item())


# Local-spec norm names -> the Transformer Engine spec's fused-norm names.
_TE_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
             "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def gpu_checks(families: List[str]) -> dict:
    """One GPU: each family in bf16 with the local spec, and (when Transformer Engine is installed) the TE spec
    from the same weights, and an FP8 (hybrid) forward."""
    from megatron_huatuo.models.provider import build_model, have_transformer_engine, transformer_config
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import initialize

    initialize(seed=5)
    out: dict = {"have_te": have_transformer_engine()}
    for name in families:
        arch = get_arch(name)
        tokens = torch.randint(0, arch.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
        positions = torch.arange(64, device="cuda").repeat(2, 1)
        config = transformer_config(arch, precision="bf16")
        local = build_model(arch, config)
        result = {"weights": {k: v.float().cpu() for k, v in local.state_dict().items() if isinstance(v, torch.Tensor)},
                  "tokens": tokens.cpu()}
        with torch.no_grad():
            result["local"] = local(tokens, positions, None).float().cpu()
        if out["have_te"]:
            te = build_model(arch, config, transformer_impl="transformer_engine", attention_backend="te")
            te_params = dict(te.named_parameters())
            with torch.no_grad():
                for pname, param in local.named_parameters():
                    key = pname
                    for short, fused in _TE_NAMES.items():
                        if pname.endswith(short):
                            key = pname[: -len(short)] + fused
                    te_params[key].copy_(param)
                result["te"] = te(tokens, positions, None).float().cpu()
            fp8_config = transformer_config(arch, precision="bf16", fp8="hybrid")
            fp8 = build_model(arch, fp8_config, transformer_impl="transformer_engine", attention_backend="te")
            fp8.load_state_dict(te.state_dict(), strict=False)
            from megatron.core.fp8_utils import get_fp8_context

            with torch.no_grad(), get_fp8_context(fp8_config):
                result["fp8"] = fp8(tokens, positions, None).float().cpu()
        out[name] = result
    return out


def fail_on_rank_one(seconds_to_hang: float = 0.0) -> int:
    """For the harness's own tests: rank 1 raises (or, with ``seconds_to_hang``, rank 0 hangs)."""
    import os
    import time

    rank = int(os.environ["RANK"])
    if seconds_to_hang and rank == 0:
        time.sleep(seconds_to_hang)
    if not seconds_to_hang and rank == 1:
        raise ValueError("rank one says no")
    return rank


# (tensor_parallel, sequence_parallel, recompute) of the attention-backend checks
BACKEND_LAYOUTS = [(1, False, "none"), (2, True, "selective")]


def backend_segments(batch: int, seq: int) -> torch.Tensor:
    """Packed rows for the backend checks: three documents, then (second row) trailing padding (segment -1)."""
    segment_ids = torch.zeros(batch, seq, dtype=torch.long)
    segment_ids[:, 5:] = 1
    segment_ids[:, 12:] = 2
    segment_ids[-1, seq - 4:] = -1
    return segment_ids


def backend_checks(arch_names: list, backends: List[str], seed: int = 1234,
                   layouts: Optional[list] = None) -> Dict[tuple, dict]:
    """Every backend against ``local`` from the same weights, at TP=1 and TP=2 + SP (+ selective recompute).

    Per (layout, family, backend, rows): the largest |logit - local logit| and |local logit| on this rank (vocab
    shard), and for backends that train on CPU the largest |grad - local grad| and |local grad| over all
    parameters after backward of a fixed random projection of the logits. Rows: ``causal`` (no mask, causal
    model) and ``isolated`` (packed documents + padding, built ``masked_segments``, inputs from
    ``segments.model_inputs``, as the trainer makes them). fp32 (TF32 off on CUDA); on CUDA flex trains too.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel.schedules import custom_backward

    from megatron_huatuo.models.attention.segments import model_inputs
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import initialize

    out: Dict[tuple, dict] = {}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    for tp, sp, recompute in layouts or BACKEND_LAYOUTS:
        initialize(tensor_parallel=tp, seed=seed)
        rank = ps.get_tensor_model_parallel_rank()
        for name in arch_names:
            arch = get_arch(name) if isinstance(name, str) else name
            name = arch.name
            config = transformer_config(arch, tensor_parallel=tp, sequence_parallel=sp, recompute=recompute)
            gen = torch.Generator().manual_seed(11)
            tokens = torch.randint(0, arch.vocab_size, (2, SEQ), generator=gen)
            positions = torch.arange(SEQ).repeat(2, 1)
            segments = backend_segments(2, SEQ)
            probe = torch.randn(2, SEQ, arch.vocab_size // tp, generator=torch.Generator().manual_seed(rank))
            if cuda:
                tokens, positions, segments, probe = (t.cuda() for t in (tokens, positions, segments, probe))
            weights = build_model(arch, config).state_dict()

            def run(backend: str, isolated: bool, grads: bool):
                model = build_model(arch, config, attention_backend=backend, masked_segments=isolated)
                model.load_state_dict(weights)
                inputs = model_inputs(backend, tokens, positions, segments, isolated=isolated)
                with torch.set_grad_enabled(grads):
                    logits = inputs(model)
                if not grads:
                    return logits, None
                loss = (logits.float() * probe).sum()
                custom_backward(loss, torch.ones_like(loss))  # as the schedules do (keeps the CPU mapping)
                return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

            for rows, isolated in (("causal", False), ("isolated", True)):
                ref_logits, ref_grads = run("local", isolated, grads=True)
                for backend in backends:
                    trains = backend != "flex" or cuda  # FlexAttention has no CPU backward
                    logits, grads = run(backend, isolated, grads=trains)
                    result = dict(logit_diff=(logits - ref_logits).abs().max().item(),
                                  logit_scale=ref_logits.abs().max().item())
                    if grads is not None:
                        result["grad_diff"] = max((grads[n] - g).abs().max().item() for n, g in ref_grads.items())
                        result["grad_scale"] = max(g.abs().max().item() for g in ref_grads.values())
                    out[(tp, sp, name, backend, rows)] = result
    return out


def gpu_fast_path_checks(arch_names: list, flex_archs: Optional[List[str]] = None) -> dict:
    """One GPU: the fast path in bf16 and its moving parts.

    - bf16 logits and gradients of sdpa and flex vs local (same weights, isolated packed rows);
    - flex is compiled once: new document layouts (new BlockMask closures) do not recompile
      (``torch._dynamo.config.error_on_recompile`` after the first micro-batch);
    - megatron-core's fused SwiGLU and cross-entropy (``training.performance.fusion_fields``) give the unfused
      per-token loss and gradients (fp32).
    ``flex_archs``: the families that also run flex (default all; each new shape costs a compilation on the
    device's time budget; ``[]`` is a CPU dry run of the rest, FlexAttention has no CPU backward).
    """
    import torch._dynamo

    from megatron_huatuo.models.attention.segments import model_inputs
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.performance import fusion_fields

    initialize(seed=3)
    torch.backends.cuda.matmul.allow_tf32 = False
    out: dict = {}
    for name in arch_names:
        arch = get_arch(name) if isinstance(name, str) else name
        name = arch.name
        flex = flex_archs is None or name in flex_archs
        gen = torch.Generator().manual_seed(5)
        tokens = torch.randint(0, arch.vocab_size, (2, 128), generator=gen).cuda()
        positions = torch.arange(128, device="cuda").repeat(2, 1)
        segments = torch.zeros(2, 128, dtype=torch.long)
        segments[:, 40:], segments[:, 90:], segments[1, 120:] = 1, 2, -1
        segments = segments.cuda()
        labels = torch.randint(0, arch.vocab_size, (2, 128), generator=gen).cuda()
        config = transformer_config(arch, precision="bf16")
        weights = build_model(arch, config).state_dict()
        family: dict = {}
        for backend in ("local", "sdpa", "flex") if flex else ("local", "sdpa"):
            model = build_model(arch, config, attention_backend=backend, masked_segments=True)
            model.load_state_dict(weights)
            loss = model_inputs(backend, tokens, positions, segments, labels, isolated=True)(model)
            loss.float().mean().backward()
            family[backend] = dict(loss=loss.detach().float().cpu(),
                                   grads={n: p.grad.detach().float().cpu() for n, p in model.named_parameters()})
        # flex: three more micro-batches with other document layouts must reuse the compiled kernel
        model = build_model(arch, config, attention_backend="flex", masked_segments=True)
        model.load_state_dict(weights)
        recompiled = None
        torch._dynamo.config.error_on_recompile = True
        try:
            for cut in (17, 64, 101) if flex else ():
                other = torch.zeros_like(segments)
                other[:, cut:] = 1
                model_inputs("flex", tokens, positions, other, labels, isolated=True)(model).float().mean().backward()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            recompiled = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            torch._dynamo.config.error_on_recompile = False
        family["flex_recompiled"] = recompiled
        # fusions, fp32
        fp32 = transformer_config(arch)
        fused_cfg = transformer_config(arch, **fusion_fields(True, "local", arch.position_embedding == "rope"))
        fp32_weights = build_model(arch, fp32).state_dict()
        for key, cfg in (("unfused", fp32), ("fused", fused_cfg)):
            model = build_model(arch, cfg, attention_backend="sdpa")
            model.load_state_dict(fp32_weights)
            loss = model(tokens, positions, None, labels=labels)
            loss.mean().backward()
            family[key] = dict(loss=loss.detach().cpu(), grads={n: p.grad.detach().cpu() for n, p in model.named_parameters()})
        out[name] = family
    return out
