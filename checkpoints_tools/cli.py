"""``python -m checkpoints_tools import|export|verify ...`` (see docs/checkpoints.md)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from megatron_huatuo.models.attention.resolve import BACKENDS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m checkpoints_tools", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face model -> megatron-core dist_checkpointing directory")
    imp.add_argument("--hf", required=True, help="HF directory (safetensors or pytorch_model*.bin + config.json)")
    imp.add_argument("--arch", required=True, help="registry arch name, e.g. baichuan2-7b, yi-34b")
    imp.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    exp = sub.add_parser("export", help="dist checkpoint or training checkpoint.dir -> HF safetensors")
    exp.add_argument("--ckpt", required=True, help="import directory or training checkpoint.dir")
    exp.add_argument("--arch", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--vocab-size", type=int, default=None, help="default: the checkpoint's embedding rows")
    exp.add_argument("--iteration", type=int, default=None, help="default: latest_checkpointed_iteration.txt")
    exp.add_argument("--tokenizer", default=None, help="directory whose files are copied next to the weights")
    exp.add_argument("--format", choices=["llama", "baichuan"], default=None,
                     help="default: llama for RoPE archs (NormHead folded), baichuan for ALiBi")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ver = sub.add_parser("verify", help="megatron checkpoint vs exported HF model: logits on the same token ids")
    ver.add_argument("--ckpt", required=True, help="import directory or training checkpoint.dir")
    ver.add_argument("--hf", required=True, help="exported HF directory (Llama; Baichuan format needs its remote code)")
    ver.add_argument("--arch", required=True)
    src = ver.add_mutually_exclusive_group()
    src.add_argument("--prompts", default=None, help="text file, one prompt per line (tokenised by --tokenizer)")
    src.add_argument("--tokens", type=int, nargs="+", default=None, help="one sequence of token ids")
    ver.add_argument("--tokenizer", default=None, help="tokenizer directory for --prompts (default: --hf)")
    ver.add_argument("--tol", type=float, default=1e-3, help="largest allowed max abs logit difference")
    ver.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                     help="both models run in this dtype (one model in memory at a time)")
    ver.add_argument("--iteration", type=int, default=None)
    ver.add_argument("--attention-backend", choices=list(BACKENDS), default="auto",
                     help="core attention of our forward (models/attention; auto: local on CPU)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from checkpoints_tools import convert

    try:
        if args.command == "import":
            out = convert.import_hf(args.hf, args.arch, args.out)
        elif args.command == "verify":
            from checkpoints_tools import verify

            opts = verify.VerifyOptions(tokens=args.tokens, prompts=args.prompts, tokenizer=args.tokenizer,
                                        tol=args.tol, dtype=args.dtype, iteration=args.iteration,
                                        attention_backend=args.attention_backend)
            result = verify.verify(args.ckpt, args.hf, args.arch, opts)
            print(result.line(args.tol))
            return 0 if result.passed else 1
        else:
            out = convert.export(args.ckpt, args.arch, args.out, convert.ExportOptions(
                fmt=args.format, vocab_size=args.vocab_size, iteration=args.iteration,
                tokenizer=args.tokenizer, dtype=args.dtype))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:  # bad input: one clear line
        print(f"checkpoints_tools {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
