"""``python -m preprocessing <subcommand>``: the offline data jobs behind one entry point.

    prepare          read, clean, filter, deduplicate and chunk corpora      (preprocessing/prepare.py)
    rewrite          documents -> question/answer pairs via an OpenAI-compatible server (preprocessing/rewrite.py)
    train-tokenizer  a small SentencePiece tokenizer (demo / tests)           (preprocessing/train_tokenizer.py)
    dataset          one-stage dataset: template, loss masks, .bin/.idx, priority order, packing
                                                                              (preprocessing/dataset/)
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional


def _prepare(argv: list[str]) -> int:
    from preprocessing.prepare import InputError, PrepareConfig, run

    ap = argparse.ArgumentParser(prog="python -m preprocessing prepare",
                                 description="read, clean, filter, deduplicate and chunk corpora")
    ap.add_argument("--sources", required=True, help="YAML/JSON list of {name, kind, lang, path, text_field, id_field}")
    ap.add_argument("--out", required=True, help="output directory (documents.jsonl, report.json)")
    defaults = PrepareConfig()
    for name, value in vars(defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args(argv)
    cfg = PrepareConfig(**{k: getattr(args, k) for k in vars(defaults)})
    try:
        report = run(args.sources, args.out, cfg)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {"read": report.read, "dropped": {k: len(v) for k, v in report.dropped.items()},
               "kept_documents": report.kept_documents, "chunks": report.chunks}
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _rewrite(argv: list[str]) -> int:
    from preprocessing.rewrite import BudgetExhausted, RewriteConfig, RewriteError, api_key_from_env, rewrite_file

    ap = argparse.ArgumentParser(prog="python -m preprocessing rewrite",
                                 description="documents -> question/answer pairs through an OpenAI-compatible server")
    ap.add_argument("--docs", required=True, help="documents.jsonl from `prepare`")
    ap.add_argument("--out", required=True, help="output directory (pairs.jsonl, failures.jsonl)")
    ap.add_argument("--cache", default=None, help="request cache directory (default: <out>/cache)")
    ap.add_argument("--base-url", required=True, help="e.g. http://localhost:8000/v1 (key: HUATUO_REWRITE_API_KEY)")
    ap.add_argument("--model", default="gpt-3.5-turbo")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=None, help="budget of paid requests for this run")
    ap.add_argument("--retries", type=int, default=6)
    ap.add_argument("--backoff", type=float, default=1.0)
    args = ap.parse_args(argv)
    cfg = RewriteConfig(base_url=args.base_url, model=args.model, api_key=api_key_from_env(),
                        concurrency=args.concurrency, max_requests=args.max_requests, retries=args.retries,
                        backoff=args.backoff)
    try:
        counts = rewrite_file(args.docs, args.out, cfg, args.cache or f"{args.out}/cache")
    except BudgetExhausted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    except RewriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


def _train_tokenizer(argv: list[str]) -> int:
    from preprocessing.train_tokenizer import main

    return main(argv)


def _dataset(argv: list[str]) -> int:
    from preprocessing.dataset.cli import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "prepare": _prepare,
    "rewrite": _rewrite,
    "train-tokenizer": _train_tokenizer,
    "dataset": _dataset,
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(SUBCOMMANDS[argv[0]](argv[1:]) or 0)
