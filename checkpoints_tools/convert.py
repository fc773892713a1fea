"""import (HF -> megatron-core dist_checkpointing) and export (dist checkpoint -> HF safetensors + config.json).

Both stream (a few tensors in memory, never the model; ``checkpoints_tools.streaming``) and run in one process at
TP1/PP1: megatron-core's dist_checkpointing stores global tensors, so an imported
directory loads into any TP/PP layout (the trainer's ``checkpoint.pretrained``) and any training checkpoint
(any TP/PP/VPP; the model keys are global, whatever the ``"model"``/``"model0"`` container name) loads back here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron_huatuo.atomic import atomic_directory, single_writer
from megatron_huatuo.models import hf_config as hfc
from megatron_huatuo.models.registry import PRESET_TOKEN_IDS, ArchSpec, get_arch
from megatron_huatuo.training.manifest import verify_manifest, write_manifest
from checkpoints_tools.hf_io import HFReader, write_hf
from checkpoints_tools.mapping import baichuan2, llama
from checkpoints_tools.streaming import GroupLoader, build_meta_model, model_params, save_streaming

MARKER = "latest_checkpointed_iteration.txt"
INFO = hfc.INFO_FILE
_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class ExportOptions:
    fmt: Optional[str] = None  # llama | mistral | qwen2 | baichuan; default: the arch's own (llama for RoPE Baichuan2)
    vocab_size: Optional[int] = None
    iteration: Optional[int] = None
    tokenizer: Optional[str] = None
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; default: the checkpoint's
    trust: bool = False  # --trust-checkpoint: no manifest needed, megatron-core's unrestricted unpickling
    hf_config: Optional[str] = None  # a config.json (or a directory holding one) describing the checkpoint


FORMATS = ("llama", "mistral", "qwen2", "baichuan")
# HF tensors that carry no weights of the model (transformers <4.3x saved the rotary buffers)
_NOT_WEIGHTS = ("rotary_emb.inv_freq",)
# Files of a tokenizer directory that ``export --tokenizer`` copies; never weights or configs of a model.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
TOKENIZER_PATTERNS = ("tokenization_*.py", "*.tiktoken")  # a tokenizer's own remote code (Baichuan's) and tables
BAICHUAN_REMOTE_CODE = ("configuration_baichuan.py", "modeling_baichuan.py", "generation_utils.py", "quantizer.py")
BAICHUAN_NOTE = (
    "note: a Baichuan-format directory runs only with Baichuan's remote code beside the weights: copy "
    + ", ".join(BAICHUAN_REMOTE_CODE) + " (and tokenization_baichuan.py for the tokenizer) from the released "
    "Baichuan2 checkpoint of the same size (7B: RoPE, 13B: ALiBi) and load with trust_remote_code=True. That code "
    "targets transformers 4.x (released with 4.29.2; its tokenizer fails from 4.34 on); on transformers 5.x the 7B "
    "code cannot run a forward pass and the 13B code also needs the accelerate package. For plain transformers, "
    "export a RoPE model with --format llama instead.")
# Baichuan2-Chat's released generation_config.json: Baichuan's chat() reads the user/assistant ids and max_new_tokens.
BAICHUAN2_GENERATION = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "user_token_id": 195,
                        "assistant_token_id": 196, "max_new_tokens": 2048, "temperature": 0.3, "top_k": 5,
                        "top_p": 0.85, "repetition_penalty": 1.05, "do_sample": True}


def _single_process_model(arch: ArchSpec, dtype: torch.dtype):
    """A real TP1/PP1 GPTModel without random init (its weights are overwritten): the in-memory reference."""
    from megatron_huatuo.models.provider import build_model, transformer_config

    config = transformer_config(arch, precision=_PRECISION[dtype], perform_initialization=False)
    return build_model(arch, config)


@dataclass
class _ImportJob:
    reader: HFReader
    arch: ArchSpec
    family: object  # the mapping module (llama or baichuan2)
    dtype: torch.dtype
    out: Path

    def source(self, name: str) -> torch.Tensor:
        return self.family.hf_tensor(self.arch, self.reader, name)

    def check_shapes(self, params: dict) -> None:
        """Map every parameter on ``meta`` tensors (header shapes, no data) before anything is written, so a
        missing tensor or a shape that contradicts the arch is reported by name up front, not from inside
        megatron-core's writer half-way through the save. An HF tensor the mapping never reads (a layer more than
        the arch has, a bias it has no place for) is refused too: dropping weights is never a conversion."""
        read: set = set()
        for name, param in params.items():
            used: list = []

            def meta(hf_name: str) -> torch.Tensor:
                used.append(hf_name)
                return self.reader.meta(hf_name)

            try:
                mapped = self.family.hf_tensor(self.arch, meta, name)
            except (KeyError, RuntimeError, ValueError) as err:
                raise ValueError(f"{self.reader.dir}: cannot build {name} from {', '.join(used)} ({err})") from None
            if tuple(mapped.shape) != tuple(param.shape):
                found = ", ".join(f"{n} {tuple(self.reader.meta(n).shape)}" for n in used)
                raise ValueError(f"{self.reader.dir}: {found} give {name} the shape {tuple(mapped.shape)}, "
                                 f"arch {self.arch.name} expects {tuple(param.shape)}")
            read.update(used)
        unused = sorted(n for n in self.reader.names - read if not n.endswith(_NOT_WEIGHTS)
                        and not (self.arch.tie_embeddings and n == "lm_head.weight"))
        if unused:
            more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
            raise ValueError(f"{self.reader.dir}: tensor(s) {', '.join(unused[:3])}{more} have no place in arch "
                             f"{self.arch.name} (a layer or bias more than it has?)")

    def write_info(self, arch_name: Optional[str], hf_dir: str) -> None:
        config = Path(hf_dir) / "config.json"
        hfc.record(self.out, self.arch, {"arch": arch_name or self.arch.name, "vocab_size": self.arch.vocab_size,
                                         "source": str(hf_dir),
                                         "format": self.family.__name__.rsplit(".", 1)[-1]},
                   hf_config=config if config.is_file() else None)


def import_arch(hf_dir: str, arch_name: Optional[str], reader: HFReader) -> ArchSpec:
    """The arch of an HF directory: from its config.json, compared field by field with ``arch_name`` when that is
    given too; a registry arch alone only for a directory without config.json."""
    config = Path(hf_dir) / "config.json"
    named = get_arch(arch_name) if arch_name else None
    embed = reader.meta("model.embed_tokens.weight")
    if config.is_file():
        arch = hfc.arch_from_config(config, named)
        if embed.shape[0] != arch.vocab_size:
            raise ValueError(f"{hf_dir}: model.embed_tokens.weight has {embed.shape[0]} rows but config.json "
                             f"says vocab_size {arch.vocab_size}")
    elif named is None:
        raise ValueError(f"{hf_dir}: no config.json; name the architecture with --arch")
    else:
        arch = named.with_overrides(vocab_size=embed.shape[0]) if embed.shape[0] != named.vocab_size else named
    if embed.shape[1] != arch.hidden_size:
        raise ValueError(f"{hf_dir}: hidden size {embed.shape[1]} does not match arch {arch.name} "
                         f"({arch.hidden_size})")
    return arch


def _prepare_import(hf_dir: str, arch_name: Optional[str], out: str) -> _ImportJob:
    """Checks shared by both import paths: arch vs HF config and sizes, layout detection, an empty output
    directory."""
    reader = HFReader(hf_dir)
    try:
        embed = reader.meta("model.embed_tokens.weight")
        arch = import_arch(hf_dir, arch_name, reader)
        family = baichuan2 if "model.layers.0.self_attn.W_pack.weight" in reader.names else llama
        if family is baichuan2 and (arch.qkv_bias or arch.num_query_groups != arch.num_attention_heads):
            raise ValueError(f"{hf_dir}: Baichuan's W_pack layout has no GQA and no biases, arch {arch.name} has")
        out_path = Path(out)
        if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
            raise FileExistsError(f"output directory {out_path} is not empty")  # before any heavy work
    except BaseException:
        reader.close()
        raise
    return _ImportJob(reader, arch, family, embed.dtype, out_path)


@single_writer("out")  # before reading anything: a second writer stops at once
def import_hf(hf_dir: str, arch_name: Optional[str], out: str) -> Path:
    """Write ``out`` (dist_checkpointing of ``{"model": sharded_state_dict}``) + ``huatuo_checkpoint.json`` (with
    the ArchSpec) + the source's config.json / generation_config.json, streaming: tensors are read, mapped and
    written one at a time (see ``checkpoints_tools.streaming``). ``arch_name`` None: read from config.json."""
    from megatron_huatuo.runtime import destroy, initialize

    job = _prepare_import(hf_dir, arch_name, out)
    try:
        with atomic_directory(out) as tmp:  # a failure half-way leaves no output directory behind
            job.out = tmp
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = build_meta_model(job.arch, job.dtype)
            job.check_shapes(model_params(model))
            save_streaming(model, job.source, tmp)
            job.write_info(arch_name, hf_dir)
            write_manifest(tmp)  # last: sizes + checksums of everything above (megatron_huatuo/training/manifest.py)
    finally:
        job.reader.close()
        destroy()
    return Path(out)


@single_writer("out")
def import_hf_in_memory(hf_dir: str, arch_name: Optional[str], out: str) -> Path:
    """The non-streaming import (a real model filled in RAM, saved by megatron-core's default strategy): kept only
    as the reference that tests and ``bench/convert_memory.py`` compare the streaming import with."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.runtime import destroy, initialize

    job = _prepare_import(hf_dir, arch_name, out)
    try:
        with atomic_directory(out) as tmp:
            job.out = tmp
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = _single_process_model(job.arch, job.dtype)
            params = model_params(model)
            with torch.no_grad():
                for name, param in params.items():
                    tensor = job.source(name)
                    if param.shape != tensor.shape:
                        raise ValueError(f"{hf_dir}: {name} has shape {tuple(tensor.shape)}, model expects "
                                         f"{tuple(param.shape)}")
                    param.copy_(tensor)
            dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
            job.write_info(arch_name, hf_dir)
            write_manifest(tmp)
    finally:
        job.reader.close()
        destroy()
    return Path(out)


def resolve_checkpoint(ckpt: str, iteration: Optional[int] = None) -> Path:
    """An import directory as is; a training ``checkpoint.dir`` -> its ``iter_%07d`` (latest or ``iteration``)."""
    root = Path(ckpt)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    if iteration is None and (root / MARKER).exists():
        text = (root / MARKER).read_text().strip()
        try:
            iteration = int(text)
        except ValueError:
            raise ValueError(f"{root / MARKER}: expected an iteration number, got {text!r}") from None
    if iteration is not None:
        root = root / f"iter_{iteration:07d}"
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint iteration directory not found: {root}")
    if not (root / "metadata.json").exists():
        raise FileNotFoundError(f"{root} is not a dist_checkpointing directory (no metadata.json)")
    return root


def _embedding_meta(path: Path, trust: bool = False):
    from megatron_huatuo.training import dcp_io

    for key, meta in dcp_io.load_tensors_metadata(path, trust=trust).items():
        if key.endswith("embedding.word_embeddings.weight"):
            return meta
    raise ValueError(f"{path}: no embedding.word_embeddings.weight in the checkpoint")


def default_format(arch: ArchSpec) -> str:
    """The HF layout an arch exports to: its own model type; Baichuan2 as Llama for RoPE (NormHead folded, plain
    transformers loads it), in Baichuan's layout for ALiBi (Llama cannot express it)."""
    if arch.family == "baichuan2":
        return "llama" if arch.position_embedding == "rope" else "baichuan"
    return {"yi": "llama"}.get(arch.family, arch.family)


def export_arch(ckpt: str, arch_name: Optional[str], hf_config: Optional[str], path: Path) -> tuple:
    """(arch, source config.json path or None): the arch from ``--arch`` / ``--hf-config`` / what the checkpoint
    directory recorded (import, or the trainer's ``checkpoint.dir``), all of them compared when several are known."""
    where = next((d for d in (Path(ckpt), path) if (d / INFO).is_file()), None)
    recorded = hfc.recorded_arch(where) if where is not None else None
    arch = hfc.resolve(arch_name, hf_config, recorded, str(where / INFO) if where is not None else str(ckpt))
    source = hfc.source_files(hf_config) if hf_config else hfc.source_files(where) if where is not None else {}
    return arch, source


def _token_ids(source_config: Optional[dict], arch: ArchSpec, tokenizer: Optional[Path] = None) -> dict:
    """bos/eos/pad ids: the source model's config; else the SentencePiece ``tokenizer.model`` given with
    --tokenizer (a tokenizer of one's own, as the demo trains); else the presets' (Baichuan2, Yi)."""
    if source_config is not None:
        return {k: source_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                if source_config.get(k) is not None}
    if tokenizer is not None and (tokenizer / "tokenizer.model").is_file():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
        ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "pad_token_id": sp.pad_id()}
        return {k: v for k, v in ids.items() if v >= 0}  # -1: the model has no such piece
    return dict(PRESET_TOKEN_IDS) if arch.family in ("baichuan2", "yi") else {}


def export_config(arch: ArchSpec, fmt: str, dtype: str, source: dict, tokenizer: Optional[Path] = None) -> dict:
    """config.json of the export: the source model's own (vocabulary and dtype updated) when it is of the same
    format and describes this arch, else ours for the format with the source's (or the preset's) token ids."""
    source_config = json.loads(source["config.json"].read_text()) if "config.json" in source else None
    same_kind = source_config is not None and source_config.get("model_type") == fmt
    if same_kind:
        config = dict(source_config)
        config["vocab_size"] = arch.vocab_size
        config.pop("dtype", None)
        config["torch_dtype"] = dtype
        hfc.check_agree(arch, hfc.read_config(config, str(source["config.json"]),
                                              beside=source["config.json"].parent).fields,
                        "the checkpoint's architecture", str(source["config.json"]))
        return config
    family = baichuan2 if fmt == "baichuan" else llama
    config = family.hf_config(arch, dtype) if fmt == "baichuan" else llama.hf_config(arch, dtype, fmt)
    config.update(_token_ids(source_config, arch, tokenizer))
    return config


def generation_config(arch: ArchSpec, config: dict, source: dict) -> dict:
    """generation_config.json: the source model's when known; else Baichuan2-Chat's released one for Baichuan2
    (its chat() needs user/assistant ids 195/196 and max_new_tokens); else the config's bos/eos/pad ids."""
    if "generation_config.json" in source:
        return json.loads(source["generation_config.json"].read_text())
    if arch.family == "baichuan2":
        ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        return {**BAICHUAN2_GENERATION, **ids}
    return {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}


def tokenizer_files(tok: Path) -> list:
    """The tokenizer files of ``tok`` (never weights: pointing --tokenizer at a released checkpoint is fine)."""
    found = [tok / n for n in TOKENIZER_FILES if (tok / n).is_file()]
    for pattern in TOKENIZER_PATTERNS:
        found += sorted(f for f in tok.glob(pattern) if f.is_file())
    if not found:
        raise FileNotFoundError(f"--tokenizer {tok}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return found


@single_writer("out")
def export(ckpt: str, arch_name: Optional[str], out: str, options: ExportOptions = ExportOptions()) -> Path:
    from megatron_huatuo.runtime import destroy, initialize

    path = resolve_checkpoint(ckpt, options.iteration)
    verify_manifest(path, trust=options.trust)  # before any byte of it is interpreted
    arch, source = export_arch(ckpt, arch_name, options.hf_config, path)  # before megatron-core is imported
    meta = _embedding_meta(path, options.trust)
    vocab = options.vocab_size or meta.global_shape[0]
    if vocab != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=vocab)
    fmt = options.fmt or default_format(arch)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    family = baichuan2 if fmt == "baichuan" else llama
    if fmt == "baichuan" and arch.family != "baichuan2":
        raise ValueError(f"--format baichuan needs a Baichuan2 arch, got {arch.name}")
    out_dtype = getattr(torch, options.dtype) if options.dtype else meta.dtype
    tok = Path(options.tokenizer) if options.tokenizer else None
    if tok is not None and not tok.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {tok}")
    copies = tokenizer_files(tok) if tok is not None else []
    config = export_config(arch, fmt, _DTYPE_NAME[out_dtype], source, tok)
    generation = generation_config(arch, config, source)
    try:
        with atomic_directory(out) as tmp:  # complete HF directory or none
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = build_meta_model(arch, meta.dtype)
            placeholders = {k: v.detach() for k, v in model_params(model).items()}
            # the same mapping on meta tensors gives the HF layout, so each safetensors header is written first
            layout = [(n, tuple(t.shape)) for n, t in family.mcore_to_hf(arch, lambda n: placeholders[n].to("meta"))]
            write_hf(tmp, layout, family.mcore_to_hf(arch, GroupLoader(model, path, options.trust)), config, dtype=out_dtype)
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            for f in copies:
                shutil.copy2(f, tmp / f.name)
    finally:
        destroy()
    return Path(out)


def written_format(out: str | Path) -> Optional[str]:
    """The model_type of an exported directory's config.json (None when unreadable)."""
    try:
        return json.loads((Path(out) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
