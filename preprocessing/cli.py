"""``python -m preprocessing <subcommand>``: the offline data jobs behind one entry point.

    prepare          read, clean, filter, deduplicate and chunk corpora      (preprocessing/prepare/)
    merge            join the outputs of `prepare --shard i/n` (global dedup, chunking)
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
    import dataclasses
    import os

    from preprocessing.prepare import InputError, PrepareConfig, run
    from preprocessing.sharding import Shard, ShardError

    ap = argparse.ArgumentParser(prog="python -m preprocessing prepare",
                                 description="read, clean, filter, deduplicate and chunk corpora (docs/preprocessing.md)")
    ap.add_argument("--sources", required=True,
                    help="YAML/JSON list of {name, kind, lang, path, text_field, id_field, format, split}")
    ap.add_argument("--out", required=True, help="output directory (documents.jsonl, rejects.jsonl, report.json)")
    ap.add_argument("--shard", default=None, metavar="I/N",
                    help="process only shard I of N (round-robin by document); then run `merge --out OUT --shards N`")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=cores,
                    help="processes (default: the cores this process may run on, e.g. a Slurm allocation's)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in dataclasses.fields(PrepareConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                        help=f.metadata.get("help", "") + " (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        cfg = PrepareConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig)})
        shard = Shard.parse(args.shard)
        report = run(args.sources, args.out, cfg, shard=shard, workers=max(1, args.workers),
                     progress=not args.quiet)
    except (InputError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not shard.whole:
        counts = report["counts"]
        print(json.dumps({"shard": args.shard, "read": sum(c["read"] for c in counts.values()),
                          "dropped": {r: sum(c["dropped"][r] for c in counts.values())
                                      for r in next(iter(counts.values()), {"dropped": {}})["dropped"]}}))
        print(f"shard {shard.index}/{shard.count} done; when every shard is: python -m preprocessing merge "
              f"--out {args.out} --shards {shard.count}", file=sys.stderr)
        return 0
    print(json.dumps({k: report[k] for k in ("read", "dropped", "kept_documents", "chunks")}, ensure_ascii=False))
    return 0


def _merge(argv: list[str]) -> int:
    from preprocessing.prepare import InputError, merge
    from preprocessing.sharding import ShardError

    ap = argparse.ArgumentParser(prog="python -m preprocessing merge",
                                 description="join `prepare --shard i/n` outputs: global dedup, chunking, final files")
    ap.add_argument("--out", required=True, help="the --out directory every shard wrote to")
    ap.add_argument("--shards", type=int, required=True, help="N of the shards' --shard i/N")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        if args.shards < 1:
            raise ShardError(f"--shards must be at least 1, got {args.shards}")
        report = merge(args.out, args.shards, progress=not args.quiet)
    except (InputError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("read", "dropped", "kept_documents", "chunks")}, ensure_ascii=False))
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
    "merge": _merge,
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
