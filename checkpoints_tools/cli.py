"""``python -m checkpoints_tools import|export|verify|manifest ...`` (see docs/checkpoints.md)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from megatron_huatuo.models.attention.resolve import BACKENDS


TRUST_HELP = ("load a directory without huatuo_manifest.json, with megatron-core's unrestricted unpickling (runs "
              "code a crafted checkpoint contains: only for checkpoints you trust)")


def _add_manifest(ckpt: str, iteration: Optional[int]):
    """``manifest``: seal a legacy directory the user trusts; one that has a manifest is checked instead."""
    from checkpoints_tools.convert import resolve_checkpoint
    from megatron_huatuo.training.manifest import read_manifest, verify_manifest, write_manifest

    path = resolve_checkpoint(ckpt, iteration)
    if read_manifest(path) is not None:
        verify_manifest(path)
        return f"{path}: manifest present and every file matches it"
    return f"wrote {write_manifest(path)}"


HF_CONFIG_HELP = ("the checkpoint's architecture as a Hugging Face config.json (a file, an HF directory, or an "
                  "import directory); compared with --arch and with what the checkpoint recorded")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m checkpoints_tools", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Hugging Face model -> megatron-core dist_checkpointing directory")
    imp.add_argument("--hf", required=True, help="HF directory (safetensors or pytorch_model*.bin + config.json)")
    imp.add_argument("--arch", default=None,
                     help="registry arch name (e.g. baichuan2-7b, yi-34b); default: read from DIR/config.json. "
                          "When given, every field is compared with config.json and a mismatch is refused")
    imp.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    exp = sub.add_parser("export", help="dist checkpoint or training checkpoint.dir -> HF safetensors")
    exp.add_argument("--ckpt", required=True, help="import directory or training checkpoint.dir")
    exp.add_argument("--arch", default=None, help="registry arch name (default: what the checkpoint recorded)")
    exp.add_argument("--hf-config", default=None, help=HF_CONFIG_HELP)
    exp.add_argument("--out", required=True)
    exp.add_argument("--vocab-size", type=int, default=None, help="default: the checkpoint's embedding rows")
    exp.add_argument("--iteration", type=int, default=None, help="default: latest_checkpointed_iteration.txt")
    exp.add_argument("--tokenizer", default=None,
                     help="directory whose tokenizer files (tokenizer.model/.json, tokenizer_config.json, "
                          "special_tokens_map.json, vocab/merges, tokenization_*.py...) are copied; never weights")
    exp.add_argument("--format", choices=["llama", "mistral", "qwen2", "baichuan"], default=None,
                     help="default: the arch's own model type; Baichuan2: llama for RoPE (NormHead folded), "
                          "baichuan for ALiBi")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    exp.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    ver = sub.add_parser("verify", help="megatron checkpoint vs exported HF model: logits on the same token ids")
    ver.add_argument("--ckpt", required=True, help="import directory or training checkpoint.dir")
    ver.add_argument("--hf", required=True, help="exported HF directory (Llama; Baichuan format needs its remote code)")
    ver.add_argument("--arch", default=None,
                     help="registry arch name (default: what the checkpoint recorded, else --hf's config.json)")
    ver.add_argument("--hf-config", default=None, help=HF_CONFIG_HELP)
    src = ver.add_mutually_exclusive_group()
    src.add_argument("--prompts", default=None, help="text file, one prompt per line (tokenised by --tokenizer)")
    src.add_argument("--tokens", type=int, nargs="+", default=None, help="one sequence of token ids")
    ver.add_argument("--tokenizer", default=None, help="tokenizer directory for --prompts (default: --hf)")
    ver.add_argument("--tol", type=float, default=1e-3, help="largest allowed max abs logit difference")
    ver.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                     help="both models run in this dtype (one model in memory at a time)")
    ver.add_argument("--iteration", type=int, default=None)
    ver.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    ver.add_argument("--trust-remote-code", action="store_true",
                     help="allow a Baichuan-format HF directory's modeling_baichuan.py to run (directories you trust)")
    ver.add_argument("--attention-backend", choices=list(BACKENDS), default="auto",
                     help="core attention of our forward (models/attention; auto: local on CPU)")
    man = sub.add_parser("manifest", help="add a manifest (sizes + checksums) to a trusted directory saved without one")
    man.add_argument("--ckpt", required=True, help="import directory or training checkpoint.dir")
    man.add_argument("--iteration", type=int, default=None, help="default: latest_checkpointed_iteration.txt")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from checkpoints_tools import convert
    from megatron_huatuo.atomic import OUTPUT_ERRORS, exit_code
    from checkpoints_tools.verify import ReferenceModelError

    try:
        if args.command == "import":
            out = convert.import_hf(args.hf, args.arch, args.out)
        elif args.command == "manifest":
            print(_add_manifest(args.ckpt, args.iteration))
            return 0
        elif args.command == "verify":
            from checkpoints_tools import verify

            opts = verify.VerifyOptions(tokens=args.tokens, prompts=args.prompts, tokenizer=args.tokenizer,
                                        tol=args.tol, dtype=args.dtype, iteration=args.iteration,
                                        trust=args.trust_checkpoint, trust_remote_code=args.trust_remote_code,
                                        hf_config=args.hf_config,
                                        attention_backend=args.attention_backend)
            result = verify.verify(args.ckpt, args.hf, args.arch, opts)
            print(result.line(args.tol))
            return 0 if result.passed else 1  # 1: a tolerance failure, never a crash (those exit 2 below)
        else:
            out = convert.export(args.ckpt, args.arch, args.out, convert.ExportOptions(
                fmt=args.format, vocab_size=args.vocab_size, iteration=args.iteration,
                tokenizer=args.tokenizer, dtype=args.dtype, trust=args.trust_checkpoint, hf_config=args.hf_config))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ReferenceModelError) as err:
        # bad input, or verify's reference model failing to run: one clear line (exit 1 stays a tolerance failure)
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"checkpoints_tools {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OUTPUT_ERRORS as err:  # another writer holds --out (2), or the disk is full (1)
        print(f"checkpoints_tools {args.command}: error: {err}", file=sys.stderr)
        return exit_code(err)
    print(f"wrote {out}")
    if args.command == "export" and convert.written_format(out) == "baichuan":
        print(convert.BAICHUAN_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
