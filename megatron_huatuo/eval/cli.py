"""``python -m megatron_huatuo.eval``: score a model on multiple-choice medical benchmarks, as the papers do.

Examples::

    python -m megatron_huatuo.eval --model exported_hf/ --bench medqa=medqa_test.jsonl \\
        --bench cmb=cmb_val.json --dev cmb=cmb_dev.json --shots 3 --out preds/
    python -m megatron_huatuo.eval --megatron-ckpt ckpts/ --arch baichuan2-7b --tokenizer tok/ \\
        --protocol huatuo2 --bench cmexam=test.jsonl --out preds/
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from megatron_huatuo.eval.prompts import TEMPLATES
from megatron_huatuo.eval.questions import QuestionFormatError, load_questions
from megatron_huatuo.eval.runner import PROTOCOLS, EvalConfig, evaluate_benchmark, write_summary
from megatron_huatuo.eval.scoring import NORMALISATIONS
from megatron_huatuo.models.attention.resolve import BACKENDS


def _named(option: str):
    def parse(value: str) -> tuple[str | None, str]:
        name, sep, path = value.partition("=")
        if not sep:
            return None, value
        if not name or not path:
            raise argparse.ArgumentTypeError(f"{option} expects NAME=PATH or PATH, got {value!r}")
        return name, path
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_huatuo.eval", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local Hugging Face model directory")
    src.add_argument("--megatron-ckpt", metavar="DIR",
                     help="training checkpoint.dir (latest iter_*) or import directory: our megatron-core model at TP1")
    p.add_argument("--arch", help="--megatron-ckpt: registry arch (default: the import's huatuo_checkpoint.json)")
    p.add_argument("--iteration", type=int, help="--megatron-ckpt: this iter_* instead of the latest")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory / the import's source)")
    p.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                   help="--model only: vllm generates with vLLM (huatuo2; needs the vllm package)")
    p.add_argument("--bench", action="append", type=_named("--bench"), required=True, metavar="NAME=PATH",
                   help="benchmark file (format detected: docs/eval.md); repeat for several; PATH alone is named "
                        "by its file stem")
    p.add_argument("--dev", action="append", type=_named("--dev"), default=[], metavar="[NAME=]PATH",
                   help="few-shot source: NAME=PATH for one benchmark, PATH alone for every benchmark without one")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--protocol", choices=PROTOCOLS, default="loglik-letter",
                   help="loglik-letter / loglik-text: option log-likelihoods; huatuo2: HuatuoGPT-II's sampled "
                        "generation and answer extraction")
    p.add_argument("--template", choices=TEMPLATES, default="plain",
                   help="loglik: plain exam prompt, or the HuatuoGPT-II dialogue template <问>：...<答>：")
    p.add_argument("--length-norm", choices=NORMALISATIONS, default="none",
                   help="loglik-text: compare summed log-probs, or their mean per token / per character")
    p.add_argument("--lang", choices=("auto", "zh", "en"), default="auto", help="prompt labels' language")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int,
                   help="cut prompts from the left to this many tokens (default: the model's context window)")
    p.add_argument("--seed", type=int, default=42, help="huatuo2 sampling seed (the original's)")
    p.add_argument("--max-new-tokens", type=int, help="huatuo2: override the original's 768 (recorded in the summary)")
    p.add_argument("--limit", type=int, help="only the first N questions of each benchmark")
    p.add_argument("--no-special-tokens", action="store_true",
                   help="do not let the tokenizer add BOS/EOS (the HuatuoGPT-II template uses no BOS)")
    p.add_argument("--trust-remote-code", action="store_true", help="needed for Baichuan-style exports (auto_map)")
    p.add_argument("--attention-backend", choices=list(BACKENDS), default="auto",
                   help="--megatron-ckpt: core attention of our forward (models/attention; auto: local on CPU)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="--megatron-ckpt: load a directory without manifest, with unrestricted unpickling (legacy)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cpu", help="--model: e.g. cuda (megatron-core uses CUDA when present)")
    p.add_argument("--out", required=True, help="directory for predictions and the summary")
    return p


def _benchmarks(args) -> tuple[list[tuple[str, str]], dict[str, list]]:
    """(name, path) per benchmark and the dev questions of each (``--dev NAME=PATH``, or one PATH for all)."""
    benches = [(name or Path(path).stem, path) for name, path in args.bench]
    names = [n for n, _ in benches]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be unique, got {names}")
    shared = [path for name, path in args.dev if name is None]
    if len(shared) > 1:
        raise ValueError("--dev PATH without a name may be given once (use --dev NAME=PATH per benchmark)")
    named = {name: path for name, path in args.dev if name is not None}
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise ValueError(f"--dev names {unknown} match no --bench (benchmarks: {names})")
    dev_paths = {n: named.get(n, shared[0] if shared else None) for n in names}
    cache: dict[str, list] = {}
    devs = {n: (cache.setdefault(p, load_questions(p)) if p else None) for n, p in dev_paths.items()}
    return benches, devs


@contextlib.contextmanager
def open_model(args):
    """(model behind the :mod:`.model` interface, tokenizer, description for the summary)."""
    from megatron_huatuo.eval import model as m

    if args.model:
        if args.backend == "vllm":
            lm = m.VLLMModel(args.model, args.dtype, args.trust_remote_code, args.seed)
            yield lm, m.load_tokenizer(args.tokenizer or args.model, args.trust_remote_code), \
                {"backend": "vllm", "path": args.model}
            return
        lm, tok = m.load_hf(args.model, tokenizer_dir=args.tokenizer, trust_remote_code=args.trust_remote_code,
                            dtype=args.dtype, device=args.device)
        yield lm, tok, {"backend": "transformers", "path": args.model}
        return
    if args.backend != "transformers":
        raise ValueError("--backend vllm needs a Hugging Face --model directory")
    import torch

    from megatron_huatuo.models.attention import build_kwargs
    from megatron_huatuo.models.inference import tp1_model

    src = m.resolve_megatron(args.megatron_ckpt, args.arch, args.tokenizer, args.iteration, args.trust_checkpoint)
    tok = m.load_tokenizer(src.tokenizer_dir, args.trust_remote_code)
    with tp1_model(src.path, src.arch, getattr(torch, args.dtype), trust=args.trust_checkpoint,
                   manifest_checked=True, **build_kwargs(args.attention_backend, src.arch)) as model:
        lm = m.MegatronModel(model, str(src.path), src.arch.max_position_embeddings,
                             m.megatron_top_k(src.tokenizer_dir))
        yield lm, tok, {"backend": "megatron-core", "attention_backend": args.attention_backend,
                        "path": str(src.path), "arch": src.arch.name,
                        "tokenizer": str(src.tokenizer_dir)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = EvalConfig(
            protocol=args.protocol, shots=args.shots, template=args.template, length_norm=args.length_norm,
            lang=args.lang, batch_size=args.batch_size, max_length=args.max_length, limit=args.limit,
            add_special_tokens=not args.no_special_tokens, seed=args.seed, max_new_tokens=args.max_new_tokens)
        if args.backend == "vllm" and cfg.protocol != "huatuo2":
            raise ValueError("--backend vllm only generates: use it with --protocol huatuo2")
        benches, devs = _benchmarks(args)
        for _, path in benches:  # bad benchmark files fail before the model is loaded
            load_questions(path)
        out = Path(args.out)
        t0 = time.perf_counter()
        with open_model(args) as (lm, tok, described):
            described["load_seconds"] = round(time.perf_counter() - t0, 3)
            results = []
            for name, path in benches:
                print(f"[eval] {name}: {path}", flush=True)
                results.append(evaluate_benchmark(lm, tok, name, path, cfg, out, devs[name]))
    except (QuestionFormatError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"megatron_huatuo.eval: error: {err}", file=sys.stderr)
        return 2
    print(write_summary(results, cfg, described, out))
    return 0
