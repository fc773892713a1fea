"""``python -m preprocessing <subcommand>``: the offline data jobs behind one entry point.

    prepare          read, clean, filter, deduplicate and chunk corpora      (preprocessing/prepare.py)
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


def _train_tokenizer(argv: list[str]) -> int:
    from preprocessing.train_tokenizer import main

    return main(argv)


def _dataset(argv: list[str]) -> int:
    from preprocessing.dataset.cli import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "prepare": _prepare,
    "train-tokenizer": _train_tokenizer,
    "dataset": _dataset,
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(SUBCOMMANDS[argv[0]](argv[1:]) or 0)
