"""``python -m preprocessing <subcommand>``: the offline data jobs behind one entry point.

    prepare          read, clean, filter, deduplicate and chunk corpora      (preprocessing/prepare/)
    prepare-merge    join the outputs of `prepare --shard i/n` (global dedup, chunking)
    prepare-dedup    the same global dedup as stages with bounded memory (signatures, pairs, decide, write, join)
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

from megatron_huatuo.atomic import OUTPUT_ERRORS, exit_code


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
                    help="process only shard I of N (round-robin by document); then run `prepare-merge --out OUT --shards N`")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--workers", type=int, default=cores,
                    help="processes (default: the cores this process may run on, e.g. a Slurm allocation's)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--allow-empty", action="store_true",
                    help="accept a source without documents (by default an error naming the file)")
    ap.add_argument("--dedup-partitions", type=int, default=0, metavar="P",
                    help="deduplicate with the staged dedup over P partitions (`prepare-dedup`, same decisions, "
                         "bounded memory) instead of the one-process merge; with --shard, run this shard's "
                         "`signatures` stage too")
    for f in dataclasses.fields(PrepareConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                        help=f.metadata.get("help", "") + " (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        cfg = PrepareConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig)})
        shard = Shard.parse(args.shard)
        if args.dedup_partitions < 0:
            raise ShardError(f"--dedup-partitions must not be negative, got {args.dedup_partitions}")
        report = run(args.sources, args.out, cfg, shard=shard, workers=max(1, args.workers),
                     progress=not args.quiet, allow_empty=args.allow_empty,
                     dedup_partitions=args.dedup_partitions)
    except (InputError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    if not shard.whole:
        counts = report["counts"]
        print(json.dumps({"shard": args.shard, "read": sum(c["read"] for c in counts.values()),
                          "dropped": {r: sum(c["dropped"][r] for c in counts.values())
                                      for r in next(iter(counts.values()), {"dropped": {}})["dropped"]}}))
        if args.dedup_partitions:
            print(f"shard {shard.index}/{shard.count} done (with its signatures); when every shard is: python -m "
                  f"preprocessing prepare-dedup pairs --out {args.out} --shards {shard.count} --partition p/"
                  f"{args.dedup_partitions} for every p (docs/preprocessing.md)", file=sys.stderr)
        else:
            print(f"shard {shard.index}/{shard.count} done; when every shard is: python -m preprocessing "
                  f"prepare-merge --out {args.out} --shards {shard.count}", file=sys.stderr)
        return 0
    print(json.dumps({k: report[k] for k in ("read", "dropped", "kept_documents", "chunks")}, ensure_ascii=False))
    return 0


def _shard_merge(argv: list[str], name: str, description: str, run: Callable, errors: tuple) -> int:
    """The ``*-merge`` subcommands: same arguments, same error handling; ``run(out, shards, progress)`` -> summary."""
    from preprocessing.sharding import ShardError

    ap = argparse.ArgumentParser(prog=f"python -m preprocessing {name}", description=description)
    ap.add_argument("--out", required=True, help="the --out directory every shard wrote to")
    ap.add_argument("--shards", type=int, required=True, help="N of the shards' --shard i/N")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        if args.shards < 1:
            raise ShardError(f"--shards must be at least 1, got {args.shards}")
        summary = run(args.out, args.shards, not args.quiet)
    except (ShardError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def _prepare_merge(argv: list[str]) -> int:
    from preprocessing.prepare import InputError, merge

    def run(out, shards, progress):
        report = merge(out, shards, progress=progress)
        return {k: report[k] for k in ("read", "dropped", "kept_documents", "chunks")}

    return _shard_merge(argv, "prepare-merge", "join `prepare --shard i/n` outputs: global dedup, chunking, final files",
                        run, (InputError,))


_DEDUP_HELP = """stages of the staged global dedup (docs/preprocessing.md); each task is rerunnable:
  signatures --shard i/S --partitions P     per input shard (or `prepare --shard i/S --dedup-partitions P`)
  pairs      --shards S --partition p/P     per partition
  decide     --shards S --partitions P      one task
  write      --shard i/S                    per input shard
  join       --shards S                     one task: documents.jsonl, rejects.jsonl, report.json
  all        --shards S --partitions P      every stage in sequence on this machine"""


def _prepare_dedup(argv: list[str]) -> int:
    from preprocessing.prepare import InputError, staged
    from preprocessing.sharding import Shard, ShardError

    ap = argparse.ArgumentParser(prog="python -m preprocessing prepare-dedup", description=_DEDUP_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=staged.STAGES + ("all",))
    ap.add_argument("--out", required=True, help="the --out directory of `prepare --shard i/S`")
    ap.add_argument("--shards", type=int, default=None, help="S, the number of input shards")
    ap.add_argument("--partitions", type=int, default=None, help="P, the number of partitions")
    ap.add_argument("--shard", default=None, metavar="I/S", help="the input shard of a signatures or write task")
    ap.add_argument("--partition", default=None, metavar="P/N", help="the partition of a pairs task")
    ap.add_argument("--quiet", action="store_true", help="accepted for symmetry with the other steps")
    args = ap.parse_args(argv)

    def need(name: str):
        value = getattr(args, name)
        if value is None:
            raise ShardError(f"prepare-dedup {args.stage} needs --{name}")
        return Shard.parse(value) if name in ("shard", "partition") else value

    try:
        if args.stage == "signatures":
            summary = staged.signatures(args.out, need("shard"), need("partitions"))
        elif args.stage == "pairs":
            summary = staged.pairs(args.out, need("shards"), need("partition"))
        elif args.stage == "decide":
            summary = staged.decide(args.out, need("shards"), need("partitions"))
        elif args.stage == "write":
            summary = staged.write(args.out, need("shard"))
        else:
            report = (staged.join(args.out, need("shards")) if args.stage == "join"
                      else staged.run_all(args.out, need("shards"), need("partitions")))
            summary = {k: report[k] for k in ("read", "dropped", "kept_documents", "chunks")}
        summary["peak_rss_mib"] = round(staged.peak_rss_mib(), 1)
    except (InputError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as exc:  # the task already runs elsewhere (2), or the disk is full (1)
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def _int_or_none(text: str) -> Optional[int]:
    """``--seed none`` for servers that refuse a ``seed`` field."""
    return None if text.lower() == "none" else int(text)


def _rewrite(argv: list[str]) -> int:
    import logging

    from preprocessing.rewrite import (API_KEY_ENVS, BudgetExhausted, JobIncomplete, RewriteConfig, RewriteError,
                                       TooManyFailures, rewrite_file)
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
    helps = {"timeout": "seconds per attempt in total: connect, send and the whole reply",
             "max_response_bytes": "a longer reply is abandoned: the document becomes a reject, nothing is cached",
             "max_failure_rate": "exit 5 (outputs written) when more than this share of the documents got no pair "
                                 "(default: only when all of them failed)",
             "allow_empty": "accept an input without documents (by default an error naming the file)"}
    for name, value in vars(defaults).items():
        if name == "base_url":
            continue
        if isinstance(value, bool):
            ap.add_argument("--" + name.replace("_", "-"), action="store_true", help=helps.get(name))
            continue
        kind = {"max_requests": int, "top_p": float, "max_tokens": int, "seed": _int_or_none, "max_failure_rate": float,
                "price_per_1k_prompt": float, "price_per_1k_completion": float}.get(name, type(value))
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value, help=helps.get(name))
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
    except TooManyFailures as exc:
        print(json.dumps(exc.summary, ensure_ascii=False, sort_keys=True))
        print(f"failed: {exc}", file=sys.stderr)
        return 5
    except (RewriteError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def _rewrite_merge(argv: list[str]) -> int:
    from preprocessing.rewrite import merge_shards

    return _shard_merge(argv, "rewrite-merge", "merge the outputs of `rewrite --shard i/n` (i = 0..n-1) in input order",
                        lambda out, shards, progress: merge_shards(out, shards), ())


def _train_tokenizer(argv: list[str]) -> int:
    from preprocessing.train_tokenizer import main

    return main(argv)


def _dataset(argv: list[str]) -> int:
    from preprocessing.dataset.cli import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "prepare": _prepare,
    "prepare-merge": _prepare_merge,
    "prepare-dedup": _prepare_dedup,
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
