"""``verify``: run our megatron-core model (from a checkpoint) and an exported Hugging Face model on the same token
ids and compare their logits (max absolute difference, top-1 agreement).

The two models run one after the other (the megatron logits are kept, the model freed), so peak memory is one
model in ``dtype``. The HF side is ``transformers.LlamaForCausalLM`` for a Llama export; a Baichuan-format export
needs Baichuan's own modeling code (``modeling_baichuan.py``, remote code) in the directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from megatron_huatuo.models.registry import get_arch


@dataclass(frozen=True)
class VerifyOptions:
    tokens: Optional[List[int]] = None  # one sequence of token ids
    prompts: Optional[str] = None  # a text file, one prompt per line (tokenised by the HF dir's tokenizer)
    tokenizer: Optional[str] = None  # default: the HF directory
    tol: float = 1e-3
    dtype: str = "float32"
    iteration: Optional[int] = None
    attention_backend: str = "auto"  # models/attention: auto | te | sdpa | flex | local (flex: forward-only on CPU)


@dataclass(frozen=True)
class VerifyResult:
    max_abs_diff: float
    top1_agreement: float
    positions: int
    passed: bool

    def line(self, tol: float) -> str:
        verdict = "OK" if self.passed else f"FAILED (tolerance {tol:g})"
        return (f"max abs logit diff {self.max_abs_diff:.3e}, top-1 agreement {self.top1_agreement:.4f} "
                f"over {self.positions} positions: {verdict}")


def _hf_kind(hf_dir: Path) -> str:
    """``llama`` or ``baichuan`` from config.json; a Baichuan export without its remote code is an error."""
    path = hf_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (an exported Hugging Face directory has a config.json)")
    config = json.loads(path.read_text())
    archs = config.get("architectures") or []
    if config.get("model_type") == "llama" or "LlamaForCausalLM" in archs:
        return "llama"
    if config.get("model_type") == "baichuan" or "BaichuanForCausalLM" in archs:
        if not (hf_dir / "modeling_baichuan.py").exists():
            raise ValueError(
                f"{hf_dir} is in Baichuan's format but has no modeling_baichuan.py (Baichuan's remote code, not "
                "shipped here): copy modeling_baichuan.py and configuration_baichuan.py from the released "
                "checkpoint into it, or export with --format llama (RoPE archs) and verify that")
        return "baichuan"
    raise ValueError(f"{path}: cannot verify architectures={archs} model_type={config.get('model_type')!r}")


def _token_batch(options: VerifyOptions, hf_dir: Path, vocab: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(token ids [batch, seq], mask of the real positions: prompts are right-padded to one length)."""
    if options.tokens and options.prompts:
        raise ValueError("give --tokens or --prompts, not both")
    if options.tokens:
        bad = [t for t in options.tokens if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"--tokens: ids {bad[:5]} outside the vocabulary [0, {vocab})")
        batch = torch.tensor([options.tokens], dtype=torch.long)
        return batch, torch.ones(batch.shape, dtype=torch.bool)
    if options.prompts:
        from transformers import AutoTokenizer

        lines = [line for line in Path(options.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{options.prompts}: no prompts (one per line)")
        tok_dir = options.tokenizer or str(hf_dir)
        try:
            tok = AutoTokenizer.from_pretrained(tok_dir)
        except (OSError, ValueError) as err:
            raise ValueError(f"--prompts needs a tokenizer: none loadable from {tok_dir} ({err})") from None
        ids = [tok(line)["input_ids"] for line in lines]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        # right padding: with causal attention the real positions never see the pad, only real positions compared
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros(batch.shape, dtype=torch.bool)
        for row, x in enumerate(ids):
            if any(not 0 <= t < vocab for t in x):
                raise ValueError(f"{options.prompts}: line {row + 1} tokenises to ids outside [0, {vocab})")
            batch[row, :len(x)] = torch.tensor(x)
            mask[row, :len(x)] = True
        return batch, mask
    g = torch.Generator().manual_seed(0)  # default: two fixed random sequences
    batch = torch.randint(0, vocab, (2, 32), generator=g)
    return batch, torch.ones(batch.shape, dtype=torch.bool)


def _megatron_logits(path: Path, arch, dtype: torch.dtype, tokens: torch.Tensor,
                     attention_backend: str = "auto") -> torch.Tensor:
    from megatron_huatuo.models.attention import build_kwargs
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import destroy, initialize
    from megatron_huatuo.training.checkpointing import load_pretrained

    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    try:
        initialize(tensor_parallel=1, pipeline_parallel=1)
        model = build_model(arch, transformer_config(arch, precision=precision, perform_initialization=False),
                            parallel_output=False, **build_kwargs(attention_backend, arch))
        load_pretrained(str(path), [model])  # the trainer's own loader (megatron-core dist_checkpointing.load)
        model.eval()
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            return model(tokens, positions, None).float()
    finally:
        destroy()


def _hf_logits(hf_dir: Path, kind: str, dtype: torch.dtype, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    if kind == "llama":
        model = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype, trust_remote_code=True)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def verify(ckpt: str, hf_dir: str, arch_name: str, options: VerifyOptions = VerifyOptions()) -> VerifyResult:
    from checkpoints_tools.convert import _embedding_meta, resolve_checkpoint

    hf = Path(hf_dir)
    if not hf.is_dir():
        raise FileNotFoundError(f"Hugging Face directory not found: {hf}")
    kind = _hf_kind(hf)
    path = resolve_checkpoint(ckpt, options.iteration)
    arch = get_arch(arch_name)
    vocab = _embedding_meta(path).global_shape[0]
    if vocab != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=vocab)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(options.dtype)
    if dtype is None:
        raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {options.dtype!r}")
    tokens, mask = _token_batch(options, hf, vocab)
    ours = _megatron_logits(path, arch, dtype, tokens, options.attention_backend)
    theirs = _hf_logits(hf, kind, dtype, tokens)
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ: megatron {tuple(ours.shape)}, Hugging Face {tuple(theirs.shape)}")
    diff = float((ours - theirs).abs()[mask].max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1))[mask].float().mean())
    return VerifyResult(diff, agree, int(mask.sum()), diff <= options.tol)
