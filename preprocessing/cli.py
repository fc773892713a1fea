"""``python -m preprocessing <subcommand>``: the offline data jobs behind one entry point.

    prepare          read, clean, filter, deduplicate and chunk corpora      (preprocessing/prepare.py)
    rewrite          documents -> question/answer pairs via an OpenAI-compatible server (preprocessing/rewrite/)
    rewrite-merge    merge the outputs of `rewrite --shard i/n` in input order   (preprocessing/rewrite/job.py)
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


def _int_or_none(text: str) -> Optional[int]:
    """``--seed none`` for servers that refuse a ``seed`` field."""
    return None if text.lower() == "none" else int(text)


def _rewrite(argv: list[str]) -> int:
    import logging

    from preprocessing.rewrite import (API_KEY_ENVS, BudgetExhausted, JobIncomplete, RewriteConfig, RewriteError,
                                       rewrite_file)
    from preprocessing.sharding import Shard, ShardError

    ap = argparse.ArgumentParser(prog="python -m preprocessing rewrite",
                                 description="documents -> question/answer pairs through an OpenAI-compatible server "
                                             f"(API key from ${API_KEY_ENVS[0]}, else ${API_KEY_ENVS[1]})")
    ap.add_argument("--docs", required=True, help="documents.jsonl from `prepare`")
    ap.add_argument("--out", required=True, help="output directory (pairs.jsonl, rejects.jsonl, summary.json)")
    ap.add_argument("--cache", default=None, help="request cache directory (default: <out>/cache; shards may share it)")
    ap.add_argument("--base-url", required=True, help="e.g. http://localhost:8000/v1")
    ap.add_argument("--shard", default=None, help="i/n: rewrite only documents whose ordinal %% n == i")
    defaults = RewriteConfig(base_url="")
    for name, value in vars(defaults).items():
        if name == "base_url":
            continue
        kind = {"max_requests": int, "top_p": float, "max_tokens": int, "seed": _int_or_none,
                "price_per_1k_prompt": float, "price_per_1k_completion": float}.get(name, type(value))
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if logging.getLogger().level > logging.DEBUG:  # httpx logs every request at INFO: millions of lines
        logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = RewriteConfig(base_url=args.base_url,
                        **{k: getattr(args, k) for k in vars(defaults) if k != "base_url"})
    try:
        summary = rewrite_file(args.docs, args.out, cfg, args.cache, shard=Shard.parse(args.shard))
    except BudgetExhausted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    except JobIncomplete as exc:
        print(f"incomplete: {exc}", file=sys.stderr)
        return 4
    except (RewriteError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def _rewrite_merge(argv: list[str]) -> int:
    from preprocessing.rewrite import merge_shards
    from preprocessing.sharding import ShardError

    ap = argparse.ArgumentParser(prog="python -m preprocessing rewrite-merge",
                                 description="merge the outputs of `rewrite --shard i/n` (i = 0..n-1) in input order")
    ap.add_argument("--out", required=True, help="the --out directory the shards wrote into")
    ap.add_argument("--shards", type=int, required=True, help="n")
    args = ap.parse_args(argv)
    try:
        summary = merge_shards(args.out, args.shards)
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
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
    "rewrite-merge": _rewrite_merge,
    "train-tokenizer": _train_tokenizer,
    "dataset": _dataset,
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(SUBCOMMANDS[argv[0]](argv[1:]) or 0)
