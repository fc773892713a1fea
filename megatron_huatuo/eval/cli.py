"""``python -m megatron_huatuo.eval``: score a Hugging Face model on multiple-choice medical benchmarks.

Example::

    python -m megatron_huatuo.eval --model exported_hf/ --bench medqa=medqa_test.jsonl \\
        --bench cmb=cmb_val.jsonl --dev cmb_dev.jsonl --shots 3 --out preds/
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_huatuo.eval.prompts import CONTINUATIONS, TEMPLATES
from megatron_huatuo.eval.questions import load_questions
from megatron_huatuo.eval.runner import MODES, EvalConfig, evaluate_benchmark, write_summary
from megatron_huatuo.eval.scoring import NORMALISATIONS


def _bench(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep:
        path = value
        name = Path(value).stem
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--bench expects name=path.jsonl, got {value!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_huatuo.eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local Hugging Face model directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    p.add_argument("--bench", action="append", type=_bench, required=True, metavar="NAME=PATH",
                   help="benchmark JSONL/JSON file; repeat for several")
    p.add_argument("--dev", help="dev file the few-shot examples come from (the first --shots questions)")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--mode", choices=MODES, default="loglik")
    p.add_argument("--template", choices=TEMPLATES, default="plain",
                   help="plain exam prompt, or the HuatuoGPT-II dialogue template <问>：...<答>：")
    p.add_argument("--continuation", choices=CONTINUATIONS, default="letter",
                   help="loglik: score the option letter or the option text")
    p.add_argument("--length-norm", choices=NORMALISATIONS, default="none",
                   help="loglik: compare summed log-probs, or their mean per token / per character")
    p.add_argument("--lang", choices=("auto", "zh", "en"), default="auto", help="prompt labels' language")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, help="truncate contexts from the left to this many tokens")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--limit", type=int, help="only the first N questions of each benchmark")
    p.add_argument("--no-special-tokens", action="store_true",
                   help="do not let the tokenizer add BOS/EOS (the HuatuoGPT-II template uses no BOS)")
    p.add_argument("--trust-remote-code", action="store_true", help="needed for Baichuan-style exports (auto_map)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="directory for predictions and the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_huatuo.eval.model import load_model_and_tokenizer

    cfg = EvalConfig(
        mode=args.mode, shots=args.shots, template=args.template, continuation=args.continuation,
        length_norm=args.length_norm, lang=args.lang, batch_size=args.batch_size, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, limit=args.limit, add_special_tokens=not args.no_special_tokens,
    )
    dev = load_questions(args.dev) if args.dev else None
    names = [n for n, _ in args.bench]
    if len(set(names)) != len(names):
        print(f"error: benchmark names must be unique, got {names}", file=sys.stderr)
        return 2
    model, tokenizer = load_model_and_tokenizer(args.model, tokenizer_dir=args.tokenizer,
                                                trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                                                device=args.device)
    out = Path(args.out)
    results = []
    for name, path in args.bench:
        print(f"[eval] {name}: {path}", flush=True)
        results.append(evaluate_benchmark(model, tokenizer, name, path, cfg, out, dev))
    print(write_summary(results, cfg, args.model, out))
    return 0
