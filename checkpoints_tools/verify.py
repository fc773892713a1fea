"""``verify``: run our megatron-core model (from a checkpoint) and an exported Hugging Face model on the same token
ids and compare their logits (max absolute difference, top-1 agreement).

The two models run one after the other (the Hugging Face one first, its logits kept and the model freed), so
peak memory is one model in ``dtype``; a reference model that fails to load or run is reported in one line (exit 2),
apart from a tolerance failure (exit 1). The HF side is transformers' own class for a Llama / Mistral / Qwen2
export; a Baichuan-format export needs Baichuan's four remote-code files in the directory, and runs them only when
asked with ``--trust-remote-code``. The megatron checkpoint is checked against its manifest and read without
arbitrary unpickling unless ``--trust-checkpoint``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from megatron_huatuo.models import hf_config as hfc


class ReferenceModelError(RuntimeError):
    """The Hugging Face model could not be loaded or run (e.g. Baichuan's remote code on an unsupported
    transformers version): reported in one line with exit code 2, apart from a tolerance failure (exit 1)."""


@dataclass(frozen=True)
class VerifyOptions:
    tokens: Optional[List[int]] = None  # one sequence of token ids
    prompts: Optional[str] = None  # a text file, one prompt per line (tokenised by the HF dir's tokenizer)
    tokenizer: Optional[str] = None  # default: the HF directory
    tol: float = 1e-3
    dtype: str = "float32"
    iteration: Optional[int] = None
    trust: bool = False  # --trust-checkpoint (megatron side)
    trust_remote_code: bool = False  # --trust-remote-code (HF side: a Baichuan-format directory's Python files)
    hf_config: Optional[str] = None  # the checkpoint's architecture as a config.json (default: recorded / --hf's)
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


_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w[\w.]*)\s+import", re.MULTILINE)
NATIVE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _remote_code_files(hf_dir: Path, released: Tuple[str, ...]) -> List[str]:
    """The remote-code files a directory needs: the released set when its modeling file is absent; otherwise the
    configuration and modeling files and every module they import relatively (``from .quantizer import ...``,
    also inside functions), which is what transformers itself checks before it runs them."""
    config_file, modeling_file = released[:2]
    if not (hf_dir / modeling_file).exists():
        return list(released)
    needed, todo = [config_file, modeling_file], [modeling_file, config_file]
    while todo:
        path = hf_dir / todo.pop()
        if not path.exists():
            continue
        for module in _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8", errors="replace")):
            name = module.split(".")[0] + ".py"
            if name not in needed:
                needed.append(name)
                todo.append(name)
    return needed


def _hf_kind(hf_dir: Path, trust_remote_code: bool = False) -> str:
    """``llama`` / ``mistral`` / ``qwen2`` (transformers' own classes) or ``baichuan`` (remote code) from
    config.json; a Baichuan export without the four files of Baichuan's remote code is an error naming them, and
    so is one whose remote code the caller did not allow to run."""
    from checkpoints_tools.convert import BAICHUAN_REMOTE_CODE

    path = hf_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (an exported Hugging Face directory has a config.json)")
    config = json.loads(path.read_text())
    archs = config.get("architectures") or []
    for kind, cls in NATIVE.items():
        if config.get("model_type") == kind or cls in archs:
            return kind
    if config.get("model_type") == "baichuan" or "BaichuanForCausalLM" in archs:
        missing = [f for f in _remote_code_files(hf_dir, BAICHUAN_REMOTE_CODE) if not (hf_dir / f).exists()]
        if missing:
            raise ValueError(
                f"{hf_dir} is in Baichuan's format but lacks {', '.join(missing)} (Baichuan's remote code, not "
                f"shipped here): copy {', '.join(BAICHUAN_REMOTE_CODE)} from the released checkpoint into it, "
                "or export with --format llama (RoPE archs) and verify that")
        if not trust_remote_code:
            raise ValueError(
                f"{hf_dir} is in Baichuan's format: verifying it runs the directory's modeling_baichuan.py; pass "
                "--trust-remote-code to allow that (only for directories you trust)")
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


def _megatron_logits(path: Path, arch, dtype: torch.dtype, tokens: torch.Tensor, trust: bool,
                     attention_backend: str = "auto") -> torch.Tensor:
    from megatron_huatuo.models.attention import build_kwargs
    from megatron_huatuo.models.inference import tp1_model

    # the trainer's model and loader (dist_checkpointing.load, safe unpickling); the manifest was checked above
    with tp1_model(path, arch, dtype, trust=trust, manifest_checked=True,
                   **build_kwargs(attention_backend, arch)) as model:
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            return model(tokens, positions, None).float()


def _hf_logits(hf_dir: Path, kind: str, dtype: torch.dtype, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    try:
        if kind in NATIVE:
            model = getattr(transformers, NATIVE[kind]).from_pretrained(str(hf_dir), dtype=dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype,
                                                                      trust_remote_code=True)
        model.eval()
        with torch.no_grad():
            return model(tokens).logits.float()
    except Exception as err:  # the reference model's own failure, not a logit difference
        where = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = ""
        if kind == "baichuan":
            hint = (f" (Baichuan's remote code targets transformers 4.x; this is {transformers.__version__}; "
                    "the 13B code also needs accelerate)")
        raise ReferenceModelError(f"the Hugging Face model in {hf_dir} failed to load or run: "
                                  f"{type(err).__name__}: {where}{hint}") from None


def verify(ckpt: str, hf_dir: str, arch_name: Optional[str], options: VerifyOptions = VerifyOptions()
           ) -> VerifyResult:
    """``arch_name`` / ``options.hf_config`` / what the checkpoint recorded give the megatron arch (compared when
    several are known); with none of them, the HF directory's own config.json."""
    from checkpoints_tools.convert import _embedding_meta, export_arch, resolve_checkpoint
    from megatron_huatuo.training import dcp_io
    from megatron_huatuo.training.manifest import verify_manifest

    hf = Path(hf_dir)
    if not hf.is_dir():
        raise FileNotFoundError(f"Hugging Face directory not found: {hf}")
    kind = _hf_kind(hf, options.trust_remote_code)
    path = resolve_checkpoint(ckpt, options.iteration)
    verify_manifest(path, trust=options.trust)
    try:
        arch, _ = export_arch(ckpt, arch_name, options.hf_config, path)
    except hfc.HFConfigError as err:
        if arch_name or options.hf_config or not str(err).startswith("no architecture"):
            raise
        arch = hfc.arch_from_config(hf)
    vocab = _embedding_meta(path, options.trust).global_shape[0]  # reads .metadata (allow-list unpickler)
    dcp_io.load_common_state_dict(path, trust=options.trust)  # crafted common state refused before any model runs
    if vocab != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=vocab)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(options.dtype)
    if dtype is None:
        raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {options.dtype!r}")
    tokens, mask = _token_batch(options, hf, vocab)
    theirs = _hf_logits(hf, kind, dtype, tokens)  # first: a reference model that cannot run fails fast
    ours = _megatron_logits(path, arch, dtype, tokens, options.trust, options.attention_backend)
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ: megatron {tuple(ours.shape)}, Hugging Face {tuple(theirs.shape)}")
    diff = float((ours - theirs).abs()[mask].max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1))[mask].float().mean())
    return VerifyResult(diff, agree, int(mask.sum()), diff <= options.tol)
