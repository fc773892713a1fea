"""Benchmark: peak memory and time of the streaming HF <-> megatron conversion on a full-size model.

1. generate a full-size HF checkpoint with random bf16 weights in Baichuan's ``W_pack`` layout (config from the
   registry, safetensors shards written tensor by tensor, so generation streams too);
2. ``python -m checkpoints_tools import`` (streaming) and ``export --format baichuan`` back, each as its own
   process, peak RSS from ``getrusage(RUSAGE_CHILDREN)`` of a fresh wrapper process per step;
3. side by side, at reduced depth (``--ref-layers``, so the old path fits in RAM beside other jobs): the streaming
   import vs the in-memory reference import (``convert.import_hf_in_memory``, the pre-streaming path);
4. spot checks: exported tensors equal the generated ones; then every generated file is deleted.

Usage: python bench/convert_memory.py [--arch baichuan2-7b] [--workdir DIR (default: $TMPDIR/convert_memory)] [--ref-layers 8]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs a command in a child and prints that child's peak RSS (KiB): a fresh wrapper per step, so the maximum
# covers that step only
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")

GENERATE = """
import sys, torch
from megatron_huatuo.models.registry import get_arch
from checkpoints_tools.hf_io import write_hf
from checkpoints_tools.mapping import baichuan2
arch = get_arch(sys.argv[1]).with_overrides(num_layers=int(sys.argv[3]))
h, f, v = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size
layout = [("model.embed_tokens.weight", (v, h))]
for i in range(arch.num_layers):
    p = f"model.layers.{i}."
    layout += [(p + "self_attn.W_pack.weight", (3 * h, h)), (p + "self_attn.o_proj.weight", (h, h)),
               (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
               (p + "mlp.down_proj.weight", (h, f)), (p + "input_layernorm.weight", (h,)),
               (p + "post_attention_layernorm.weight", (h,))]
layout += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
gen = torch.Generator().manual_seed(0)
def tensors():
    for name, shape in layout:
        t = torch.empty(shape, dtype=torch.bfloat16)
        if "norm" in name:
            t.fill_(1.0).add_(torch.randn(shape, generator=gen).to(torch.bfloat16), alpha=0.1)
        else:
            for rows in t.split(4096):  # bounded fp32 scratch
                rows.copy_(torch.randn(rows.shape, generator=gen) * 0.02)
        yield name, t
write_hf(sys.argv[2], layout, tensors(), baichuan2.hf_config(arch, "bfloat16"), dtype=torch.bfloat16,
         shard_bytes=2 * 2**30)
"""

REFERENCE_IMPORT = """
import sys
from checkpoints_tools import convert
if __name__ == "__main__":
    convert.import_hf_in_memory(sys.argv[1], sys.argv[2], sys.argv[3])
"""

SPOT_CHECK = """
import sys, torch
from checkpoints_tools.hf_io import HFReader
a, b = HFReader(sys.argv[1]), HFReader(sys.argv[2])
assert a.names == b.names, sorted(a.names ^ b.names)[:5]
last = max(int(n.split(".")[2]) for n in a.names if n.startswith("model.layers."))
for n in ["model.embed_tokens.weight", "model.layers.0.self_attn.W_pack.weight", "model.layers.0.mlp.gate_proj.weight",
          f"model.layers.{last}.mlp.down_proj.weight", f"model.layers.{last}.post_attention_layernorm.weight",
          "model.norm.weight", "lm_head.weight"]:
    assert torch.equal(a(n), b(n)), n
print("SPOT_CHECK_OK", len(a.names))
"""


def run(step: str, cmd: list) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = int(proc.stdout.rsplit("MAXRSS_KIB", 1)[1].split()[0]) * 1024
    print(f"{step}: {wall:.1f} s, peak RSS {rss / 2**30:.2f} GiB", flush=True)
    return {"step": step, "seconds": round(wall, 1), "peak_rss_gib": round(rss / 2**30, 2), "out": proc.stdout}


def dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="baichuan2-7b")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "convert_memory"))
    ap.add_argument("--ref-layers", type=int, default=8, help="depth of the side-by-side run (0: skip it)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from megatron_huatuo.models.registry import get_arch

    arch = get_arch(args.arch)
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    py = sys.executable
    n = arch.num_parameters()
    results = {"arch": arch.name, "parameters": n, "model_gib_bf16": round(n * 2 / 2**30, 2)}
    print(f"{arch.name}: {n / 1e9:.2f} B parameters, {results['model_gib_bf16']:.2f} GiB in bf16", flush=True)
    try:
        steps = []
        if args.ref_layers:
            small = work / "small"
            steps.append(run(f"generate ({args.ref_layers} layers)",
                             [py, "-c", GENERATE, arch.name, str(small / "hf"), str(args.ref_layers)]))
            # the reduced-depth arch is registered under a temporary name inside a small driver process (the CLI
            # takes registry names only)
            for label, code in (("import streaming", "import_hf"),
                                ("import in-memory (reference)", "import_hf_in_memory")):
                driver = ("import sys\nfrom checkpoints_tools import convert\n"
                          "from megatron_huatuo.models import registry\n"
                          "a = registry.get_arch(sys.argv[2]).with_overrides(name='bench-depth', "
                          f"num_layers={args.ref_layers})\nregistry.ARCHS[a.name] = a\n"
                          f"if __name__ == '__main__':\n    convert.{code}(sys.argv[1], a.name, sys.argv[3])\n")
                out = small / ("mc_" + code)
                steps.append(run(f"{label} ({args.ref_layers} layers)", [py, "-c", driver, str(small / "hf"),
                                                                          arch.name, str(out)]))
            cmp = run("compare streaming vs in-memory", [py, "-c", COMPARE, str(small / "mc_import_hf"),
                                                         str(small / "mc_import_hf_in_memory")])
            results["streaming_equals_in_memory"] = "EQUAL_TENSORS" in cmp["out"]
            print([line for line in cmp["out"].splitlines() if line.startswith("EQUAL")], flush=True)
            shutil.rmtree(small)
        steps.append(run(f"generate ({arch.num_layers} layers)", [py, "-c", GENERATE, arch.name, str(work / "hf"),
                                                                   str(arch.num_layers)]))
        results["hf_gib"] = round(dir_gib(work / "hf"), 2)
        steps.append(run("import streaming (full)", [py, "-m", "checkpoints_tools", "import", "--hf", str(work / "hf"),
                                                      "--arch", arch.name, "--out", str(work / "mc")]))
        results["mc_gib"] = round(dir_gib(work / "mc"), 2)
        steps.append(run("export streaming (full)", [py, "-m", "checkpoints_tools", "export", "--ckpt",
                                                      str(work / "mc"), "--arch", arch.name, "--format", "baichuan",
                                                      "--out", str(work / "back")]))
        check = run("spot check", [py, "-c", SPOT_CHECK, str(work / "hf"), str(work / "back")])
        results["spot_check"] = "SPOT_CHECK_OK" in check["out"]
        results["steps"] = [{k: v for k, v in s.items() if k != "out"} for s in steps]
        print(json.dumps(results, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


COMPARE = """
import sys, torch
from megatron.core import dist_checkpointing
a, b = sys.argv[1], sys.argv[2]
ma, mb = dist_checkpointing.load_tensors_metadata(a), dist_checkpointing.load_tensors_metadata(b)
assert set(ma) == set(mb), set(ma) ^ set(mb)
for k in ma:
    assert ma[k].global_shape == mb[k].global_shape and ma[k].dtype == mb[k].dtype, k
# the tensors themselves: read both with torch.distributed.checkpoint, one key at a time
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
ra, rb = FileSystemReader(a), FileSystemReader(b)
for k, m in ma.items():
    ta = {k: torch.empty(m.global_shape, dtype=m.dtype)}
    tb = {k: torch.empty(m.global_shape, dtype=m.dtype)}
    dcp.load(ta, storage_reader=ra, no_dist=True)
    dcp.load(tb, storage_reader=rb, no_dist=True)
    assert torch.equal(ta[k], tb[k]), k
print("EQUAL_TENSORS", len(ma))
"""

if __name__ == "__main__":
    sys.exit(main())
