"""Training recipes: YAML -> typed dataclass configs, with ``dotted.key=value`` overrides and one validation place.

Why strict: a typo in a recipe (``lerning_rate``) silently falling back to a default wastes a cluster run, so
every unknown key fails naming the key and the file. Layout checks (heads/layers divisible by the parallel
sizes, global batch divisible by micro batch x data parallel) run in :func:`validate`, before any process-group
work, so a bad recipe fails in seconds on the login node instead of after a Slurm queue wait.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


DEFAULT_ARCH = "tiny-baichuan2-7b"  # when a recipe names neither model.arch nor model.hf_config


@dataclass
class ModelConfig:
    arch: Optional[str] = None  # a registry preset (megatron_huatuo.models.registry)
    # or a Hugging Face config.json (file, HF directory, or an import directory that recorded its arch); exactly one
    hf_config: Optional[str] = None
    vocab_size: Optional[int] = None  # overrides the arch's vocabulary (e.g. the demo's 2048-token tokenizer)
    dropout: float = 0.0  # attention and hidden dropout (the originals train without; resume restores RNG states)
    # core attention: auto | te | sdpa | flex | local (models/attention/; auto: te with TE on CUDA, else flex for
    # ALiBi or isolated packing and sdpa for causal RoPE rows on CUDA, local on CPU)
    attention_backend: str = "auto"


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    sp: bool = False
    distributed_optimizer: bool = False
    # uneven pipeline split: layers of the first / last stage (megatron-core's num_layers_in_first/last_pipeline_stage;
    # the rest split evenly over the middle stages), e.g. 5 layers at pp=2 as 3 + 2
    first_stage_layers: Optional[int] = None
    last_stage_layers: Optional[int] = None
    # GPU communication overlap (docs/training.md); null = on with CUDA, off on CPU/gloo
    overlap_grad_reduce: Optional[bool] = None  # DP gradient reduce overlapped with backward
    overlap_param_gather: Optional[bool] = None  # distributed optimizer's all-gather overlapped with forward
    bucket_size: Optional[int] = None  # elements per DDP bucket; null = megatron-core's default (40M, more for big DP)


@dataclass
class OptimizerSection:
    lr: float = 1e-4
    min_lr: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0


@dataclass
class ScheduleConfig:
    warmup_fraction: float = 0.01
    style: str = "cosine"  # cosine | linear | constant


@dataclass
class TrainSection:
    steps: int = 10
    global_batch: int = 8
    micro_batch: int = 1
    seq_length: int = 128
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp8 (fp8 needs Transformer Engine)
    fp8_recipe: str = "delayed"  # delayed | tensorwise (Transformer Engine's FP8 scaling; precision fp8 only)
    fusions: Optional[bool] = None  # megatron-core fused SwiGLU and cross-entropy (+ RoPE with TE); null = on with CUDA
    recompute: str = "none"  # none | selective | full
    eval_interval: int = 0  # validation every N steps and after the last one (needs data.valid_path); 0: none
    eval_iters: int = 0  # global batches per validation source and evaluation; 0: all of its rows
    # a step with a NaN/Inf loss or grad norm is skipped; this many in a row stop the run (exit 3, nothing saved)
    max_nonfinite_steps: int = 3


@dataclass
class DataConfig:
    type: str = "synthetic"  # synthetic | indexed | one_stage
    path: Optional[str] = None  # one_stage: dataset directory
    prefixes: List[str] = field(default_factory=list)  # indexed: .bin/.idx prefixes
    repeat: int = 0  # synthetic: >0 cycles this many distinct rows (a learnable signal for tests)
    # one_stage: True isolates packed samples (segment mask, positions restart); False is HuatuoGPT-II's shared
    # attention across a packed row, which trains with plain causal attention (the fused/flash fast path).
    isolate: bool = True
    valid_path: Optional[str] = None  # a held-out one-stage dataset directory: validation loss per source


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None
    interval: int = 0  # 0: only on exit / signal
    pretrained: Optional[str] = None
    # load checkpoint directories without a manifest and with megatron-core's unrestricted unpickling (legacy or
    # foreign checkpoints you trust; docs/reliability.md)
    trust: bool = False


@dataclass
class LoggingConfig:
    interval: int = 1
    tensorboard_dir: Optional[str] = None


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (inner,) = get_args(hint)
        return [_coerce(v, inner, where) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise RecipeError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != out:
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return out
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, raw: Any, where: str, source: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: section '{where}' must be a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecipeError(f"{source}: unknown key '{key}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        dotted = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, dotted, source)
        else:
            kwargs[name] = _coerce(value, hint, f"{source}: {dotted}")
    return cls(**kwargs)


def _apply_override(raw: Dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise RecipeError(f"override {override!r}: expected dotted.key=value")
    key, text = override.split("=", 1)
    value = yaml.safe_load(text) if text != "" else None
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {override!r}: '{part}' is not a section")
    node[parts[-1]] = value


def load_recipe(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                world_size: Optional[int] = None) -> Recipe:
    """Read a YAML recipe (or start from defaults), apply overrides, build the typed config and validate it."""
    raw: Dict[str, Any] = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RecipeError(f"{source}: cannot read recipe ({exc})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: invalid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: top level must be a mapping")
    for override in overrides:
        _apply_override(raw, override)
    if overrides:
        source += " (with overrides)"
    recipe = _build(Recipe, raw, "", source)
    validate(recipe, world_size=world_size, source=source)
    return recipe


def resolve_arch(recipe: Recipe):
    """The recipe's ArchSpec: ``model.arch`` (a preset) or ``model.hf_config`` (a config.json), with
    ``model.vocab_size`` applied. ``KeyError`` / ``ValueError`` / ``FileNotFoundError`` for a bad one."""
    from megatron_huatuo.models import hf_config
    from megatron_huatuo.models.registry import get_arch

    m = recipe.model
    if m.hf_config:
        arch = hf_config.resolve(hf_config=m.hf_config)
    else:
        arch = get_arch(m.arch or DEFAULT_ARCH)
    if m.vocab_size is not None:
        arch = arch.with_overrides(vocab_size=m.vocab_size)
    return arch


def uses_segment_mask(recipe: Recipe) -> bool:
    """Whether rows hold several attention-isolated documents (segment ids) or one causal sequence.

    Synthetic rows are one sequence, and a one-stage dataset with ``data.isolate: false`` (the original's shared
    attention) is causal over the whole row. Those models are built causal and get no mask, so the fused causal
    kernels run (flash attention through sdpa or TE on GPU) and no [S, S] mask is built.
    """
    return recipe.data.type != "synthetic" and recipe.data.isolate


def validate(recipe: Recipe, world_size: Optional[int] = None, source: str = "<recipe>") -> int:
    """The one validation place. Returns the data-parallel size (1 when ``world_size`` is unknown).

    Checks here do not depend on the machine's device (``slurm submit`` validates on the login node); the
    trainer resolves ``model.attention_backend`` against the real device (``training.loop.model_build_kwargs``).
    """
    from megatron_huatuo.models.attention.resolve import AttentionBackendError, check_backend, te_installed
    from megatron_huatuo.models import hf_config
    from megatron_huatuo.models.layout import stage_layers

    def fail(field_name: str, why: str):
        raise RecipeError(f"{source}: {field_name}: {why}")

    if recipe.model.arch and recipe.model.hf_config:
        fail("model.hf_config", "name the model by model.arch or by model.hf_config, not both")
    try:
        arch = resolve_arch(recipe)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        fail("model.hf_config" if recipe.model.hf_config else "model.arch", exc.args[0] if exc.args else str(exc))
    p, t = recipe.parallel, recipe.train
    for name, value in (("parallel.tp", p.tp), ("parallel.pp", p.pp), ("train.steps", t.steps),
                        ("train.global_batch", t.global_batch), ("train.micro_batch", t.micro_batch),
                        ("train.seq_length", t.seq_length)):
        if value < 1:
            fail(name, f"must be >= 1, got {value}")
    if p.vpp is not None and p.vpp < 1:
        fail("parallel.vpp", f"must be >= 1, got {p.vpp}")
    if p.vpp is not None and p.vpp > 1 and p.pp < 2:
        fail("parallel.vpp", "virtual pipeline needs parallel.pp >= 2")
    if p.sp and p.tp < 2:
        fail("parallel.sp", "sequence parallelism needs parallel.tp >= 2")
    if arch.num_attention_heads % p.tp:
        fail("parallel.tp", f"{arch.name} has {arch.num_attention_heads} attention heads, not divisible by tp={p.tp}")
    if arch.num_query_groups % p.tp:
        fail("parallel.tp", f"{arch.name} has {arch.num_query_groups} KV groups, not divisible by tp={p.tp}")
    try:
        stage_layers(arch.num_layers, p.pp, p.vpp, p.first_stage_layers, p.last_stage_layers)
    except ValueError as exc:
        key = "parallel.pp" if p.first_stage_layers is None and p.last_stage_layers is None else "parallel"
        fail(key, f"{arch.name} has {arch.num_layers} layers: {exc}")
    if arch.norm_head and arch.tie_embeddings:
        fail("model", f"{arch.name}: NormHead cannot be tied to the input embedding")
    for key, directory in (("checkpoint.pretrained", recipe.checkpoint.pretrained),
                           ("checkpoint.dir", recipe.checkpoint.dir)):
        # an import (or an earlier run) records its architecture: loading it into another one is refused here,
        # naming the fields, instead of as a shape error inside dist_checkpointing (or not at all)
        try:
            recorded = hf_config.recorded_arch(directory) if directory and Path(directory).is_dir() else None
        except ValueError as exc:
            fail(key, str(exc))
        bad = hf_config.mismatches(arch, recorded) if recorded is not None else []
        if bad:
            fail(key, f"{directory} records another architecture (recipe vs recorded): {'; '.join(bad)}")
    vocab = recipe.model.vocab_size or arch.vocab_size
    if recipe.model.vocab_size is not None and recipe.model.vocab_size < 1:
        fail("model.vocab_size", "must be >= 1")
    if vocab % p.tp:
        fail("model.vocab_size", f"{vocab} not divisible by tp={p.tp}")
    if t.precision not in ("fp32", "bf16", "fp8"):
        fail("train.precision", f"expected fp32|bf16|fp8, got {t.precision!r}")
    if t.precision == "fp8" and not te_installed():
        fail("train.precision", "fp8 needs Transformer Engine (pip install 'megatron-huatuo[gpu]'; NGC containers "
                                "have it), which is not installed here: use bf16")
    if t.fp8_recipe not in ("delayed", "tensorwise"):
        fail("train.fp8_recipe", f"expected delayed|tensorwise, got {t.fp8_recipe!r}")
    try:
        check_backend(recipe.model.attention_backend, arch, attention_dropout=recipe.model.dropout)
    except AttentionBackendError as exc:
        fail("model.attention_backend", str(exc))
    if p.overlap_param_gather and not p.distributed_optimizer:
        fail("parallel.overlap_param_gather", "overlaps the distributed optimizer's all-gather: needs "
                                              "parallel.distributed_optimizer: true")
    if p.bucket_size is not None and p.bucket_size < 1:
        fail("parallel.bucket_size", f"must be >= 1 (elements), got {p.bucket_size}")
    if t.recompute not in ("none", "selective", "full"):
        fail("train.recompute", f"expected none|selective|full, got {t.recompute!r}")
    if recipe.schedule.style not in ("cosine", "linear", "constant"):
        fail("schedule.style", f"expected cosine|linear|constant, got {recipe.schedule.style!r}")
    if not 0.0 <= recipe.schedule.warmup_fraction < 1.0:
        fail("schedule.warmup_fraction", f"must be in [0, 1), got {recipe.schedule.warmup_fraction}")
    if recipe.optimizer.min_lr > recipe.optimizer.lr:
        fail("optimizer.min_lr", "must not exceed optimizer.lr")
    if t.seq_length > arch.max_position_embeddings:
        fail("train.seq_length", f"{t.seq_length} > {arch.name}'s context {arch.max_position_embeddings}")
    d = recipe.data
    if d.type not in ("synthetic", "indexed", "one_stage"):
        fail("data.type", f"expected synthetic|indexed|one_stage, got {d.type!r}")
    if d.type == "one_stage" and not d.path:
        fail("data.path", "data.type one_stage needs a dataset directory")
    if d.type == "indexed" and not d.prefixes:
        fail("data.prefixes", "data.type indexed needs at least one .bin/.idx prefix")
    if not d.isolate and d.type != "one_stage":
        fail("data.isolate", f"shared attention across packed samples is a one_stage option, not {d.type}")
    if t.eval_interval < 0:
        fail("train.eval_interval", f"must be >= 0, got {t.eval_interval}")
    if t.eval_iters < 0:
        fail("train.eval_iters", f"must be >= 0 (0: every row of each source), got {t.eval_iters}")
    if d.valid_path and not t.eval_interval:
        fail("train.eval_interval", "data.valid_path is set: give the validation interval in steps (>= 1)")
    if t.eval_interval and not d.valid_path:
        fail("data.valid_path", f"train.eval_interval={t.eval_interval} needs a validation one-stage dataset")
    if not 0.0 <= recipe.model.dropout < 1.0:
        fail("model.dropout", f"must be in [0, 1), got {recipe.model.dropout}")
    if recipe.checkpoint.interval < 0:
        fail("checkpoint.interval", "must be >= 0")
    if t.max_nonfinite_steps < 1:
        fail("train.max_nonfinite_steps", f"must be >= 1, got {t.max_nonfinite_steps}")
    if recipe.logging.interval < 1:
        fail("logging.interval", "must be >= 1")
    dp = 1
    if world_size is not None:
        model_parallel = p.tp * p.pp
        if world_size % model_parallel:
            fail("parallel", f"world size {world_size} not divisible by tp*pp={model_parallel}")
        dp = world_size // model_parallel
    if t.global_batch % (t.micro_batch * dp):
        fail("train.global_batch", f"{t.global_batch} not divisible by micro_batch*dp={t.micro_batch}*{dp}")
    if p.vpp and p.vpp > 1 and (t.global_batch // (t.micro_batch * dp)) % p.pp:
        fail("train.global_batch", "interleaved pipeline needs micro-batches per step divisible by parallel.pp")
    return dp
