"""Command line: ``tokenize`` plain documents, ``build`` a one-stage dataset directory, ``inspect`` one."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from megatron_huatuo.atomic import OUTPUT_ERRORS, exit_code
from preprocessing.dataset.formats import FormatError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocessing.dataset")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize", help="plain pre-training JSONL -> .bin/.idx (as Megatron-LM preprocess_data.py "
                                        "--append-eod)")
    t.add_argument("--input", nargs="+", required=True, help="JSONL file(s), read in the order given")
    t.add_argument("--tokenizer", required=True, help="HF tokenizer directory or SentencePiece .model")
    t.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx")
    t.add_argument("--json-keys", nargs="+", default=["text"])
    t.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                   help="do not end documents with the EOS id (Megatron-LM without --append-eod)")
    t.add_argument("--workers", type=int, default=1, help="processes; the output is the same for any count")
    t.add_argument("--allow-empty", action="store_true", help="skip input files without rows instead of refusing")
    b = sub.add_parser("build", help="pairs + SFT JSONL -> tokenised one-stage dataset directory")
    b.add_argument("--pairs", action="append", default=[], help="unified pair JSONL (repeatable)")
    b.add_argument("--sft", action="append", default=[], help="ShareGPT/Alpaca/list JSONL (repeatable)")
    b.add_argument("--tokenizer", required=True, help="HF tokenizer directory or SentencePiece .model")
    b.add_argument("--seq-length", type=int, required=True)
    b.add_argument("--seed", type=int, default=1234)
    b.add_argument("--template", default="huatuo", choices=["huatuo", "baichuan2", "yi"])
    b.add_argument("--out", required=True)
    b.add_argument("--workers", type=int, default=1, help="processes; the output is the same for any count")
    b.add_argument("--allow-empty", action="store_true", help="skip input files without rows instead of refusing")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="encode only shard I of N into OUT.shards/; then `build-merge --out OUT --shards N`")
    m = sub.add_parser("build-merge", help="the dataset directory from the parts of `build --shard i/n` (the bytes "
                                           "of an unsharded build)")
    m.add_argument("--out", required=True, help="the --out every shard was given")
    m.add_argument("--shards", type=int, required=True, help="N of the shards' --shard i/N")
    i = sub.add_parser("inspect", help="per-source counts and the packed order's statistics")
    i.add_argument("dir")
    i.add_argument("--seq-length", type=int, default=None)
    i.add_argument("--seed", type=int, default=None)
    i.add_argument("--plot", metavar="OUT.png", help="PNG of each source's share per percent of training")
    i.add_argument("--decode", metavar="ROW", type=int, action="append", default=[],
                   help="print packed row ROW with [masked]/[trained] spans (repeatable)")
    i.add_argument("--tokenizer", default=None, help="for --decode (default: the manifest's tokenizer)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "tokenize":
            from preprocessing.dataset.tokenize import TokenizeConfig, tokenize

            rep = tokenize(TokenizeConfig(inputs=args.input, tokenizer=args.tokenizer,
                                          output_prefix=args.output_prefix, json_keys=args.json_keys,
                                          append_eod=args.append_eod, workers=args.workers,
                                          allow_empty=args.allow_empty))
            secs = max(rep["seconds"], 1e-9)
            for key, r in rep["outputs"].items():
                print(f"{key}: {r['documents']} documents, {r['tokens']} tokens ({rep['dtype']}) -> {r['prefix']}.bin/.idx")
            print(f"{rep['lines'] / secs:.1f} docs/s, {rep['bytes'] / secs / 1e6:.2f} MB/s, {secs:.2f} s, "
                  f"{rep['workers']} worker(s)")
        elif args.cmd == "build" and args.shard:
            from preprocessing.dataset.build import BuildConfig, build
            from preprocessing.sharding import Shard

            shard = Shard.parse(args.shard)
            meta = build(BuildConfig(pairs=args.pairs, sft=args.sft, tokenizer=args.tokenizer,
                                     seq_length=args.seq_length, seed=args.seed, out=args.out,
                                     template=args.template, workers=args.workers,
                                     allow_empty=args.allow_empty), shard)
            if not shard.whole:
                print(f"shard {shard.index}/{shard.count}: {len(meta['results'])} of {meta['ranges']} ranges; when "
                      f"every shard is done: python -m preprocessing.dataset build-merge --out {args.out} "
                      f"--shards {shard.count}")
            else:
                print(f"wrote {args.out}")
        elif args.cmd in ("build", "build-merge"):
            from preprocessing.dataset.build import BuildConfig, build, merge_shards

            if args.cmd == "build-merge":
                if args.shards < 1:
                    raise ValueError(f"--shards must be at least 1, got {args.shards}")
                m = merge_shards(args.out, args.shards)
            else:
                m = build(BuildConfig(pairs=args.pairs, sft=args.sft, tokenizer=args.tokenizer,
                                      seq_length=args.seq_length, seed=args.seed, out=args.out,
                                      template=args.template, workers=args.workers,
                                      allow_empty=args.allow_empty))
            for s in m["sources"]:
                print(f"{s['name']}: {s['documents']} documents, {s['tokens']} tokens, "
                      f"{s['trained_tokens']} trained, priority {s['priority']}, epochs {s['epochs']}")
            print(f"wrote {args.out}")
        else:
            from megatron_huatuo.data.one_stage import build_one_stage_dataset
            from megatron_huatuo.data.one_stage_format import read_manifest
            from preprocessing.dataset import inspection

            m = read_manifest(args.dir)
            ds = build_one_stage_dataset(args.dir, args.seq_length or m["seq_length"],
                                         m["seed"] if args.seed is None else args.seed)
            print(json.dumps({"sources": m["sources"], "rows": len(ds), **ds.stats(),
                              "loss_mask_coverage": inspection.coverage(m)}, indent=2, ensure_ascii=False))
            names = [s["name"] for s in m["sources"]]
            print("loss-mask coverage (trained / all tokens): "
                  + ", ".join(f"{n} {c:.3f}" for n, c in inspection.coverage(m).items()))
            print("source share per 10 % of training:")
            print("progress " + " ".join(f"{n:>12}" for n in names))
            for b, shares in enumerate(ds.mixture(10)):
                print(f"{b * 10:>3}-{b * 10 + 10:<4} " + " ".join(f"{shares[n]:>12.3f}" for n in names))
            if args.plot:
                inspection.plot_mixture(ds, args.plot)
                print(f"wrote {args.plot}")
            if args.decode:
                from megatron_huatuo.data.tokenizer import Tokenizer

                tok = Tokenizer(args.tokenizer or m["tokenizer"])
                for row in args.decode:
                    if not 0 <= row < ds.plan.num_rows:
                        raise ValueError(f"--decode {row}: the dataset has rows 0..{ds.plan.num_rows - 1}")
                    print(inspection.decode_row(ds, tok, row))
    except (FormatError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as exc:  # another writer holds the output (2), or the disk is full (1)
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    return 0
