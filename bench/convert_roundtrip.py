"""Benchmark: HF -> megatron import and megatron -> HF export wall time and peak RSS, next to the reference
(plain transformers ``from_pretrained`` + ``save_pretrained`` of the same model).

Usage: python bench/convert_roundtrip.py [--arch tiny-yi] [--workdir DIR]
Each step runs as its own process (as users run it), so the times include interpreter and megatron-core import.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REF = """
import sys, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); m.save_pretrained(sys.argv[2])
"""
MAKE = """
import sys, torch, transformers
from megatron_huatuo.models.registry import get_arch
a = get_arch(sys.argv[1])
c = transformers.LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.ffn_hidden_size,
    num_hidden_layers=a.num_layers, num_attention_heads=a.num_attention_heads, num_key_value_heads=a.num_query_groups,
    rms_norm_eps=a.norm_eps, tie_word_embeddings=False)
transformers.LlamaForCausalLM(c).save_pretrained(sys.argv[2])
"""


def timed(cmd) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - t, max(rss, before) / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="tiny-yi")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert-bench-"))
    py = sys.executable
    subprocess.run([py, "-c", MAKE, args.arch, str(work / "hf")], check=True, capture_output=True)
    imp = timed([py, "-m", "checkpoints_tools", "import", "--hf", str(work / "hf"), "--arch", args.arch,
                 "--out", str(work / "mc")])
    exp = timed([py, "-m", "checkpoints_tools", "export", "--ckpt", str(work / "mc"), "--arch", args.arch,
                 "--out", str(work / "back")])
    ref = timed([py, "-c", REF, str(work / "hf"), str(work / "ref")])
    print(f"arch={args.arch} import {imp[0]:.1f}s export {exp[0]:.1f}s | reference transformers load+save "
          f"{ref[0]:.1f}s | ratio (import+export)/reference {(imp[0] + exp[0]) / ref[0]:.2f} | "
          f"peak child RSS so far {max(imp[1], exp[1], ref[1]):.0f} MiB")


if __name__ == "__main__":
    main()
