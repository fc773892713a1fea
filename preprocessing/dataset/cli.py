"""Command line: ``build`` a one-stage dataset directory, ``inspect`` one."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from preprocessing.dataset.formats import FormatError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocessing.dataset")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pairs + SFT JSONL -> tokenised one-stage dataset directory")
    b.add_argument("--pairs", action="append", default=[], help="unified pair JSONL (repeatable)")
    b.add_argument("--sft", action="append", default=[], help="ShareGPT/Alpaca/list JSONL (repeatable)")
    b.add_argument("--tokenizer", required=True, help="HF tokenizer directory or SentencePiece .model")
    b.add_argument("--seq-length", type=int, required=True)
    b.add_argument("--seed", type=int, default=1234)
    b.add_argument("--template", default="huatuo", choices=["huatuo", "baichuan2", "yi"])
    b.add_argument("--out", required=True)
    i = sub.add_parser("inspect", help="per-source counts and the packed order's statistics")
    i.add_argument("dir")
    i.add_argument("--seq-length", type=int, default=None)
    i.add_argument("--seed", type=int, default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "build":
            from preprocessing.dataset.build import BuildConfig, build

            m = build(BuildConfig(pairs=args.pairs, sft=args.sft, tokenizer=args.tokenizer,
                                  seq_length=args.seq_length, seed=args.seed, out=args.out, template=args.template))
            for s in m["sources"]:
                print(f"{s['name']}: {s['documents']} documents, {s['tokens']} tokens, "
                      f"{s['trained_tokens']} trained, priority {s['priority']}, epochs {s['epochs']}")
            print(f"wrote {args.out}")
        else:
            from megatron_huatuo.data.one_stage import build_one_stage_dataset
            from megatron_huatuo.data.one_stage_format import read_manifest

            m = read_manifest(args.dir)
            ds = build_one_stage_dataset(args.dir, args.seq_length or m["seq_length"],
                                         m["seed"] if args.seed is None else args.seed)
            print(json.dumps({"sources": m["sources"], "rows": len(ds), **ds.stats()}, indent=2, ensure_ascii=False))
            names = [s["name"] for s in m["sources"]]
            print("source share per 10 % of training:")
            print("progress " + " ".join(f"{n:>12}" for n in names))
            for b, shares in enumerate(ds.mixture(10)):
                print(f"{b * 10:>3}-{b * 10 + 10:<4} " + " ".join(f"{shares[n]:>12.3f}" for n in names))
    except (FormatError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
