"""The model under evaluation behind one small interface: a Hugging Face directory, our Megatron checkpoint, or vLLM.

Scoring needs two things from a model, and this module gives them the same shape whatever runs underneath:

- :meth:`logits` of right-padded token batches (log-likelihood protocols);
- :meth:`sample` continuations of token prompts under :class:`Sampling` settings (the ``huatuo2`` protocol).

Backends:

- :class:`HFModel`: ``transformers`` ``AutoModelForCausalLM`` from a local directory (an export of
  ``checkpoints_tools`` or any other); generation is ``model.generate``. Baichuan-style exports name their modeling
  code in ``config.json``'s ``auto_map`` and need ``trust_remote_code`` (off by default: it runs Python from the
  model directory).
- :class:`MegatronModel`: our megatron-core ``GPTModel`` at TP1 with the weights of a training checkpoint
  directory (latest ``iter_*``) or an import directory, built and loaded by
  :func:`megatron_huatuo.models.inference.tp1_model` (the code ``checkpoints_tools verify`` uses), so a checkpoint
  is scored without exporting it. Sampling runs megatron-core's KV cache (``StaticInferenceContext``) with the
  logits processors of ``transformers`` (repetition penalty, temperature, top-k, top-p, applied in
  ``generate``'s order), so both backends sample the same way.
- :class:`VLLMModel`: generation only, when ``vllm`` is installed (GPU; not needed otherwise).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# transformers' default when neither the caller nor the model's generation_config.json sets top_k
HF_DEFAULT_TOP_K = 50


@dataclass(frozen=True)
class Sampling:
    """Generation settings. ``top_k=None`` means what ``transformers`` would use: the model's
    ``generation_config.json`` value, else 50 (the original HuatuoGPT-II evaluation never set it)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Optional[int] = None
    repetition_penalty: float = 1.0


def context_length(config) -> Optional[int]:
    """The longest sequence a config says its model handles (``max_position_embeddings`` and the names Baichuan /
    GPT-style configs use instead), or None."""
    for attr in ("max_position_embeddings", "model_max_length", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _processors(settings: Sampling, top_k: int):
    """transformers' logits processors in ``generate``'s order (penalty, then temperature, top-k, top-p)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.do_sample:
        if settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(settings.temperature))
        if top_k:
            procs.append(TopKLogitsWarper(top_k=top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=settings.top_p))
    return procs


def _cut_at_eos(ids: Sequence[int], eos: Optional[int]) -> list[int]:
    ids = list(ids)
    if eos is not None and eos in ids:
        return ids[: ids.index(eos)]
    return ids


class HFModel:
    backend = "transformers"

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.device = next(model.parameters()).device
        self.max_length = context_length(model.config)
        gen = getattr(model, "generation_config", None)
        self.default_top_k = getattr(gen, "top_k", None) or HF_DEFAULT_TOP_K

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        mask = torch.zeros_like(input_ids)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        return self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], settings: Sampling, pad_id: int, eos_id: Optional[int],
               seed: int) -> list[list[int]]:
        """Left-padded batch through ``model.generate``; the new tokens of each prompt, cut at the first EOS."""
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            attention[row, width - len(ids):] = 1
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, num_beams=1,
            temperature=settings.temperature if settings.do_sample else None,
            top_p=settings.top_p if settings.do_sample else None,
            top_k=(settings.top_k or self.default_top_k) if settings.do_sample else None,
            repetition_penalty=settings.repetition_penalty, pad_token_id=pad_id, eos_token_id=eos_id)
        torch.manual_seed(seed)
        out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                  generation_config=config)
        return [_cut_at_eos(out[row, width:].tolist(), eos_id) for row in range(len(prompts))]


class MegatronModel:
    backend = "megatron-core"

    def __init__(self, model, name: str, max_length: int, default_top_k: int = HF_DEFAULT_TOP_K):
        self.model, self.name, self.max_length, self.default_top_k = model, name, max_length, default_top_k
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        # Built causal (no mask): right padding never reaches the real positions before it.
        tokens = input_ids.to(self.device)
        positions = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        return self.model(tokens, positions, None).float()

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], settings: Sampling, pad_id: int, eos_id: Optional[int],
               seed: int) -> list[list[int]]:
        """Decode with megatron-core's static KV cache. Prompts of different lengths need no padding: the batch is
        prefilled up to the shortest prompt, then each step feeds every row its own next prompt token until its
        prompt is used up (what megatron-core's own generation controller does), and samples after that."""
        from megatron.core.inference.contexts import StaticInferenceContext

        torch.manual_seed(seed)
        procs = _processors(settings, settings.top_k or self.default_top_k)
        lens = [len(p) for p in prompts]
        total = max(lens) + settings.max_new_tokens
        batch = len(prompts)
        tokens = torch.full((batch, total), pad_id, dtype=torch.long, device=self.device)
        for row, ids in enumerate(prompts):
            tokens[row, :lens[row]] = torch.tensor(list(ids), dtype=torch.long)
        context = StaticInferenceContext(batch, total)
        start = min(lens)
        positions = torch.arange(total, device=self.device).unsqueeze(0).expand(batch, -1)
        logits = self.model(tokens[:, :start], positions[:, :start], None, inference_context=context,
                            runtime_gather_output=True)
        context.sequence_len_offset = start
        context.enable_decode_mode()
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        lens_t = torch.tensor(lens, device=self.device)
        for t in range(start, total):
            scores = logits[:, -1, :].float()
            in_prompt = lens_t > t
            # The processors see each row's real tokens so far (the repetition penalty reads them); rows still
            # reading their prompt are overwritten below, their scores are never used.
            scores = procs(tokens[:, :t], scores)
            if settings.do_sample:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            nxt = torch.where(in_prompt, tokens[:, t], torch.where(done, torch.full_like(nxt, pad_id), nxt))
            tokens[:, t] = nxt
            generated = t + 1 - lens_t
            if eos_id is not None:
                done |= (~in_prompt) & (nxt == eos_id)
            done |= (~in_prompt) & (generated >= settings.max_new_tokens)
            if bool(done.all()) or t + 1 == total:
                break
            logits = self.model(tokens[:, t:t + 1], positions[:, t:t + 1], None, inference_context=context,
                                runtime_gather_output=True)
            context.sequence_len_offset += 1
        return [_cut_at_eos(tokens[row, lens[row]:lens[row] + settings.max_new_tokens].tolist(), eos_id)
                for row in range(batch)]


class VLLMModel:
    backend = "vllm"

    def __init__(self, model_dir: str, dtype: str, trust_remote_code: bool, seed: int):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("--backend vllm needs the vllm package (pip install vllm, CUDA machines); "
                              "the default backend is transformers") from None
        self.llm = LLM(model=model_dir, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed)
        self.name = model_dir
        self.max_length = self.llm.llm_engine.model_config.max_model_len
        self.device = None

    def logits(self, input_ids, lengths):
        raise ValueError("the vllm backend only generates: use it with --protocol huatuo2")

    def sample(self, prompts, settings: Sampling, pad_id: int, eos_id: Optional[int], seed: int) -> list[list[int]]:
        from vllm import SamplingParams

        top_k = settings.top_k or HF_DEFAULT_TOP_K
        params = [SamplingParams(max_tokens=settings.max_new_tokens,
                                 temperature=settings.temperature if settings.do_sample else 0.0,
                                 top_p=settings.top_p, top_k=top_k if settings.do_sample else -1,
                                 repetition_penalty=settings.repetition_penalty, seed=seed + i)
                  for i in range(len(prompts))]  # one seed per question: independent of batching
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [_cut_at_eos(o.outputs[0].token_ids, eos_id) for o in outs]


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """Explain up front what a Baichuan-style export needs, instead of transformers' generic error.

    Such a config names its classes in ``auto_map`` (``modeling_baichuan.BaichuanForCausalLM``); transformers has no
    Baichuan class of its own, so the Python files named there must sit in the model directory (copy them from the
    base model's repository) and loading must be allowed with ``trust_remote_code``.
    """
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        return
    modules = sorted({str(v).split(".")[0] for v in auto_map.values() if isinstance(v, str) and "--" not in str(v)})
    missing = [m for m in modules if not (model_dir / f"{m}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir}: config.json maps {config.get('architectures')} to remote code in {missing} "
            f"(auto_map), but {', '.join(m + '.py' for m in missing)} is not in the directory; copy the modeling "
            f"files from the base model's repository next to the weights"
        )
    if not trust_remote_code:
        raise ValueError(
            f"{model_dir}: config.json uses remote code ({', '.join(modules)}); pass --trust-remote-code to load it "
            f"(only for directories you trust: it runs their Python code)"
        )


def load_tokenizer(tokenizer_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=trust_remote_code)


def load_model_and_tokenizer(model_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
                             trust_remote_code: bool = False, dtype: str = "float32", device: str = "cpu"):
    """The raw ``transformers`` model and tokenizer of a local directory (the demo's answer step uses it too)."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    check_remote_code(model_dir, trust_remote_code)
    tokenizer = load_tokenizer(tokenizer_dir or model_dir, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype])
    model.to(device).eval()
    return model, tokenizer


def load_hf(model_dir: str | Path, **kwargs) -> tuple[HFModel, object]:
    model, tokenizer = load_model_and_tokenizer(model_dir, **kwargs)
    return HFModel(model, tokenizer, str(model_dir)), tokenizer


@dataclass(frozen=True)
class MegatronSource:
    """What ``--megatron-ckpt`` resolves to: the dist_checkpointing directory, its arch and a tokenizer."""

    path: Path
    arch: object
    tokenizer_dir: Path


def resolve_megatron(ckpt: str, arch_name: Optional[str], tokenizer_dir: Optional[str],
                     iteration: Optional[int] = None, trust: bool = False) -> MegatronSource:
    """A training ``checkpoint.dir`` (its latest complete ``iter_*``, or ``iteration``) or an import directory.

    The arch comes from ``--arch`` or the import's ``huatuo_checkpoint.json``; the vocabulary from the saved
    embedding (as ``checkpoints_tools export`` does); the tokenizer from ``--tokenizer`` or the HF directory the
    import was made from. The directory is checked against its manifest first and read without arbitrary
    unpickling unless ``trust`` (``--trust-checkpoint``).
    """
    from checkpoints_tools.convert import INFO, _embedding_meta, resolve_checkpoint
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.training.manifest import verify_manifest

    path = resolve_checkpoint(ckpt, iteration)
    verify_manifest(path, trust=trust)
    info_file = next((p / INFO for p in (path, Path(ckpt)) if (p / INFO).is_file()), None)
    info = json.loads(info_file.read_text()) if info_file else {}
    name = arch_name or info.get("arch")
    if not name:
        raise ValueError(f"{ckpt}: no {INFO} names the arch of this training checkpoint: pass --arch")
    arch = get_arch(name)
    vocab = _embedding_meta(path, trust).global_shape[0]
    if vocab != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=vocab)
    tok = tokenizer_dir or info.get("source")
    if not tok or not Path(tok).is_dir():
        raise ValueError(f"{ckpt}: pass --tokenizer DIR (a tokenizer directory; "
                         + (f"the import's source {tok} is not a directory)" if tok else "none is recorded)"))
    return MegatronSource(path, arch, Path(tok))


def megatron_top_k(tokenizer_dir: Path) -> int:
    """top_k as transformers would pick it for the exported model: generation_config.json next to the tokenizer."""
    gen = tokenizer_dir / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text()).get("top_k")
        if isinstance(value, int) and value > 0:
            return value
    return HF_DEFAULT_TOP_K


def with_overrides(settings: Sampling, **changes) -> Sampling:
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
