"""Training throughput on one GPU, side by side with a plain Hugging Face transformers step; two modes.

Device check (``bench/device_check.sh`` runs it on one H200, one case per process):

    python bench/gpu_throughput.py --case baichuan2-7b-sdpa --out DIR     # writes DIR/case-<name>.json
    python bench/gpu_throughput.py --report DIR                          # DIR/device_check.{json,md}
    python bench/gpu_throughput.py --smoke --case all --out DIR --report DIR   # CPU: tiny shapes, same code paths

Cases (``--list``): reduced-depth stacks of the real models (real hidden size, heads, FFN and vocabulary; 2-4
layers so a training state fits one GPU), seq 4096, bf16, micro-batch 1, global batch 4, distributed optimizer,
run through the real trainer (``megatron_huatuo.training.loop.train``: DDP, overlap, fused kernels, the chosen
attention backend) on synthetic rows, or on packed rows of isolated documents (``indexed`` data: random tokens,
document lengths drawn log-normally, median ~500 tokens, written by the bench); the transformers reference
(``LlamaForCausalLM``, sdpa attention, fp32 weights under bf16 autocast, fused torch AdamW: the original
HuatuoGPT-II stack minus DeepSpeed) of the 7B shape; the 13B core attention alone (``flex`` vs ``local`` ALiBi,
forward + backward, S = 2048..8192: time and peak memory); a bf16 matmul peak. Per training case: tokens/s
(median of the steps after warm-up), model TFLOP/s (``ArchSpec.flops_per_token``, PaLM convention), MFU against
989 TFLOP/s (H100 dense bf16, the usual convention) and against the measured bf16 matmul peak, peak GPU memory,
start-up (build + first steps, including compilation) reported apart.

Multi-GPU CLI run (as before): ``python bench/gpu_throughput.py --recipe RECIPE.yaml --gpus 8 --steps 20
[dotted.key=value ...]`` runs ``torchrun -m megatron_huatuo.train`` on synthetic data and prints the median
tokens/s, TFLOP/s per GPU and MFU over the steps after ``--warmup``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H100_BF16_PEAK = 989e12  # dense bf16, the MFU convention of Megatron-LM / NVIDIA's published figures
H200_MATMUL_BF16 = 790e12  # bf16 matmul measured on the device machine (the matmul-peak case re-measures it)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # train | hf | attention | matmul
    arch: str = ""
    layers: int = 0
    backend: str = "auto"
    data: str = "synthetic"  # synthetic (one causal row) | isolated (packed documents)


CASES = [
    Case("matmul-peak", "matmul"),
    Case("baichuan2-7b-sdpa", "train", "baichuan2-7b", 4, "sdpa"),
    Case("baichuan2-7b-hf", "hf", "baichuan2-7b", 4),
    Case("baichuan2-13b-attention", "attention", "baichuan2-13b"),
    Case("baichuan2-13b-flex", "train", "baichuan2-13b", 4, "flex"),
    Case("yi-34b-sdpa", "train", "yi-34b", 2, "sdpa"),
    Case("baichuan2-13b-flex-isolated", "train", "baichuan2-13b", 4, "flex", "isolated"),
]
BY_NAME = {c.name: c for c in CASES}
TINY = {"baichuan2-7b": "tiny-baichuan2-7b", "baichuan2-13b": "tiny-baichuan2-13b", "yi-34b": "tiny-yi"}


@dataclass(frozen=True)
class Shapes:
    seq: int
    global_batch: int
    warmup: int
    measured: int
    precision: str
    attention_seqs: tuple


GPU = Shapes(seq=4096, global_batch=4, warmup=2, measured=4, precision="bf16", attention_seqs=(2048, 4096, 8192))
SMOKE = Shapes(seq=64, global_batch=2, warmup=1, measured=2, precision="fp32", attention_seqs=(32, 64))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> Optional[float]:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reduced_arch(case: Case, smoke: bool):
    """The case's architecture at reduced depth (or its tiny twin for the CPU smoke run), registered by name so a
    recipe can refer to it."""
    from megatron_huatuo.models.registry import ARCHS, get_arch

    if smoke:
        return get_arch(TINY[case.arch])
    name = f"{case.arch}-{case.layers}l"
    if name not in ARCHS:
        ARCHS[name] = get_arch(case.arch).with_overrides(name=name, num_layers=case.layers)
    return ARCHS[name]


def isolated_documents(directory: Path, vocab: int, tokens: int, seed: int = 0) -> str:
    """A .bin/.idx prefix of random-token documents, lengths log-normal (median ~500, clipped to 16..4096)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    prefix = str(directory / "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    written = 0
    while written < tokens:
        length = int(np.clip(rng.lognormal(math.log(500), 0.9), 16, 4096))
        builder.add_document(torch.from_numpy(rng.integers(0, vocab, length, dtype=np.int32)), [length])
        written += length
    builder.finalize(prefix + ".idx")
    return prefix


def _train_overrides(case: Case, arch, shapes: Shapes, backend: str, data_dir: Path) -> List[str]:
    overrides = [f"model.arch={arch.name}", f"model.attention_backend={backend}", "parallel.distributed_optimizer=true",
                 f"train.seq_length={shapes.seq}", f"train.global_batch={shapes.global_batch}", "train.micro_batch=1",
                 f"train.steps={shapes.warmup + shapes.measured}", f"train.precision={shapes.precision}",
                 "train.recompute=none", "checkpoint.dir=", "checkpoint.pretrained=", "logging.interval=1",
                 "logging.tensorboard_dir=", "schedule.warmup_fraction=0.0"]
    if case.data == "isolated":
        tokens = (shapes.warmup + shapes.measured + 1) * shapes.global_batch * (shapes.seq + 1)
        overrides += ["data.type=indexed", f"data.prefixes={isolated_documents(data_dir, arch.vocab_size, tokens)}"]
    return overrides


def train_case(case: Case, shapes: Shapes, smoke: bool) -> dict:
    """The real trainer in this process (one rank), on the case's reduced model."""
    from megatron_huatuo.config.recipe import load_recipe
    from megatron_huatuo.training.loop import train

    arch = reduced_arch(case, smoke)
    backend = case.backend
    note = None
    if backend == "flex" and not _cuda():
        backend, note = "sdpa", "flex cannot train on CPU: sdpa in the smoke run"
    lines: List[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(None, _train_overrides(case, arch, shapes, backend, Path(tmp)), world_size=1)
        _reset_peak()
        start = time.perf_counter()
        result = train(recipe, log=lambda msg: (lines.append(msg), print(msg, flush=True)))
        total = time.perf_counter() - start
    records = [json.loads(line[len("train "):]) for line in lines if line.startswith("train {")]
    steady = records[shapes.warmup:] or records
    tokens_s = statistics.median(r["tokens_per_s"] for r in steady)
    steps_s = sum(r["step_s"] for r in records)
    out = dict(kind="train", arch=arch.name, backend=backend, data=case.data, seq=shapes.seq,
               global_batch=shapes.global_batch, precision=shapes.precision, exit_code=result.exit_code,
               losses=[r["loss"] for r in records], tokens_per_s=tokens_s,
               flops_per_token=arch.flops_per_token(shapes.seq), startup_s=round(total - steps_s, 2),
               warmup_steps_s=round(sum(r["step_s"] for r in records[: shapes.warmup]), 2), peak_gib=_peak_gib(),
               log=[line for line in lines if not line.startswith("train {")][:4])
    if note:
        out["note"] = note
    return out


def hf_case(case: Case, shapes: Shapes, smoke: bool) -> dict:
    """One transformers LlamaForCausalLM training step of the same shape: fp32 weights, bf16 autocast, SDPA
    attention, fused AdamW (HF Trainer's bf16 path without DeepSpeed), same tokens per step."""
    import torch
    import transformers

    arch = reduced_arch(case, smoke)
    cuda = _cuda()
    device = "cuda" if cuda else "cpu"
    config = transformers.LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.ffn_hidden_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_query_groups, max_position_embeddings=shapes.seq, rms_norm_eps=arch.norm_eps,
        rope_theta=arch.rotary_base, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    _reset_peak()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=cuda)
    gen = torch.Generator().manual_seed(1)
    times, losses = [], []
    for _ in range(shapes.warmup + shapes.measured):
        _sync()
        t0 = time.perf_counter()
        total = 0.0
        for _ in range(shapes.global_batch):
            ids = torch.randint(0, arch.vocab_size, (1, shapes.seq), generator=gen).to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=ids, labels=ids).loss / shapes.global_batch
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(round(total, 4))
        print(f"hf step {len(times)}: {times[-1]:.3f} s, loss {total:.4f}", flush=True)
    steady = times[shapes.warmup:] or times
    tokens = shapes.global_batch * shapes.seq
    return dict(kind="hf", arch=arch.name, backend="transformers sdpa", data="synthetic", seq=shapes.seq,
                global_batch=shapes.global_batch, precision="bf16 autocast" if cuda else "fp32", losses=losses,
                tokens_per_s=tokens / statistics.median(steady), flops_per_token=arch.flops_per_token(shapes.seq),
                startup_s=round(time.perf_counter() - start - sum(times), 2),
                warmup_steps_s=round(sum(times[: shapes.warmup]), 2), peak_gib=_peak_gib())


def attention_case(case: Case, shapes: Shapes, smoke: bool) -> dict:
    """13B core attention alone (this rank holds all 40 heads), flex vs local ALiBi: forward + backward time and
    peak memory per sequence length (CPU smoke: tiny shapes, flex forward only)."""
    import torch
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_huatuo.models.alibi import AlibiDotProductAttention
    from megatron_huatuo.models.attention import core_attention_class
    from megatron_huatuo.models.provider import transformer_config
    from megatron_huatuo.models.registry import get_arch
    from megatron_huatuo.runtime import destroy, initialize

    arch = reduced_arch(case, smoke) if smoke else get_arch(case.arch)
    cuda = _cuda()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    initialize(seed=0)
    rows = []
    try:
        config = transformer_config(arch, precision="bf16" if cuda else "fp32", num_layers=1)
        for backend in ("flex", "local"):
            module = core_attention_class(backend, arch)(config, 1, AttnMaskType.causal, "self").to(device)
            for seq in shapes.attention_seqs:
                AlibiDotProductAttention._bias_cache = None
                _reset_peak()
                backward = cuda or backend != "flex"
                gen = torch.Generator(device=device).manual_seed(seq)
                q, k, v = (torch.randn(seq, 1, arch.num_attention_heads, arch.head_dim, generator=gen, device=device,
                                       dtype=dtype, requires_grad=backward) for _ in range(3))
                grad = torch.randn(seq, 1, arch.hidden_size, generator=gen, device=device, dtype=dtype)

                def step():
                    with torch.set_grad_enabled(backward):
                        out = module(q, k, v, None)
                    if backward:
                        out.backward(grad)

                try:
                    step()  # compile / warm up
                    _sync()
                    iters = 5 if cuda else 2
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        step()
                    _sync()
                    rows.append(dict(backend=backend, seq=seq, backward=backward,
                                     ms=round((time.perf_counter() - t0) / iters * 1000, 3), peak_gib=_peak_gib()))
                except torch.OutOfMemoryError as exc:
                    rows.append(dict(backend=backend, seq=seq, backward=backward, error=f"out of memory: {exc}"[:200]))
                print(f"attention {rows[-1]}", flush=True)
                del q, k, v, grad
    finally:
        AlibiDotProductAttention._bias_cache = None
        destroy()
    speedup = {}
    for seq in shapes.attention_seqs:
        flex = next((r for r in rows if r["backend"] == "flex" and r["seq"] == seq and "ms" in r), None)
        local = next((r for r in rows if r["backend"] == "local" and r["seq"] == seq and "ms" in r), None)
        if flex and local and flex["backward"] == local["backward"]:
            speedup[str(seq)] = round(local["ms"] / flex["ms"], 2)
    return dict(kind="attention", arch=arch.name, heads=arch.num_attention_heads, head_dim=arch.head_dim,
                rows=rows, flex_speedup_vs_local=speedup)


def matmul_case(case: Case, shapes: Shapes, smoke: bool) -> dict:
    """Achieved bf16 dense matmul TFLOP/s (8192^3, the denominator of the second MFU column)."""
    import torch

    cuda = _cuda()
    n = 8192 if cuda else 256
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    _sync()
    iters = 50 if cuda else 3
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync()
    seconds = (time.perf_counter() - t0) / iters
    return dict(kind="matmul", n=n, dtype=str(dtype), tflops=round(2 * n**3 / seconds / 1e12, 1))


RUNNERS = {"train": train_case, "hf": hf_case, "attention": attention_case, "matmul": matmul_case}


def run_case(case: Case, out: Path, smoke: bool) -> dict:
    import torch

    shapes = SMOKE if smoke else GPU
    print(f"== {case.name} ({'smoke' if smoke else 'device'}) at {time.strftime('%H:%M:%S')}", flush=True)
    start = time.perf_counter()
    try:
        result = RUNNERS[case.kind](case, shapes, smoke)
    except Exception as exc:  # noqa: BLE001 - a failed case is recorded, the others still run
        import traceback

        result = dict(kind=case.kind, error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:])
        print(result["traceback"], flush=True)
    result.update(case=case.name, wall_s=round(time.perf_counter() - start, 2), smoke=smoke,
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  torch=torch.__version__, python=sys.version.split()[0], megatron_core=_mcore_version())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"case-{case.name}.json").write_text(json.dumps(result, indent=1))
    print(f"== {case.name} done in {result['wall_s']} s" + (f": ERROR {result['error']}" if "error" in result else ""),
          flush=True)
    return result


def _mcore_version() -> str:
    from megatron_huatuo.compat import megatron_core_version

    return ".".join(map(str, megatron_core_version()))


def report(out: Path) -> dict:
    """Collect DIR/case-*.json into DIR/device_check.json and a markdown table DIR/device_check.md."""
    cases = {p.stem[len("case-"):]: json.loads(p.read_text()) for p in sorted(out.glob("case-*.json"))}
    measured_peak = cases.get("matmul-peak", {}).get("tflops")
    peak = (measured_peak * 1e12) if measured_peak and not cases["matmul-peak"].get("smoke") else H200_MATMUL_BF16
    lines = ["| case | arch | attention | data | tokens/s | TFLOP/s | MFU (989) | MFU (matmul peak) | peak GiB | "
             "start-up s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in [c.name for c in CASES if c.name in cases]:
        r = cases[name]
        if "error" in r:
            lines.append(f"| {name} | | | | error: {r['error'][:120]} | | | | | |")
            continue
        if r["kind"] not in ("train", "hf"):
            continue
        tflops = r["tokens_per_s"] * r["flops_per_token"] / 1e12
        r.update(tflops=round(tflops, 1), mfu_989=round(tflops * 1e12 / H100_BF16_PEAK, 4),
                 mfu_matmul_peak=round(tflops * 1e12 / peak, 4))
        lines.append(f"| {name} | {r['arch']} | {r['backend']} | {r['data']} | {r['tokens_per_s']:.0f} | "
                     f"{tflops:.1f} | {r['mfu_989']:.1%} | {r['mfu_matmul_peak']:.1%} | {r['peak_gib']} | "
                     f"{r['startup_s'] + r['warmup_steps_s']:.1f} |")
    summary = dict(cases=cases, matmul_peak_tflops=measured_peak)
    ours, theirs = cases.get("baichuan2-7b-sdpa", {}), cases.get("baichuan2-7b-hf", {})
    if "tokens_per_s" in ours and "tokens_per_s" in theirs:
        summary["7b_vs_transformers"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2)
        lines.append(f"\n7B shape: {summary['7b_vs_transformers']}x the transformers step's tokens/s.")
    attn = cases.get("baichuan2-13b-attention", {})
    if attn.get("rows"):
        lines += ["", "| 13B core attention | S | fwd+bwd ms | peak GiB |", "|---|---:|---:|---:|"]
        for row in attn["rows"]:
            lines.append(f"| {row['backend']}{'' if row['backward'] else ' (forward only)'} | {row['seq']} | "
                         f"{row.get('ms', row.get('error', ''))} | {row.get('peak_gib')} |")
        lines.append(f"\nflex speed-up over local: {attn.get('flex_speedup_vs_local')}")
    (out / "device_check.json").write_text(json.dumps(summary, indent=1))
    (out / "device_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return summary


def cli_run(args) -> int:
    """The multi-GPU CLI mode: torchrun the trainer on synthetic data, summarise its per-step metrics."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.gpus}", "-m", "megatron_huatuo.train",
           "--config", args.recipe, f"train.steps={args.steps}", "data.type=synthetic", "checkpoint.dir=",
           "checkpoint.pretrained=", "logging.interval=1", "logging.tensorboard_dir=", *args.overrides]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    records = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("train {")]
    if proc.returncode != 0 or not records:
        print(proc.stdout[-5000:])
        return proc.returncode or 1
    steady = records[args.warmup:] or records
    summary = {key: statistics.median(r[key] for r in steady) for key in ("tokens_per_s", "tflops_per_gpu", "mfu")
               if all(key in r for r in steady)}
    summary["steps_measured"] = len(steady)
    summary["last_loss"] = records[-1]["loss"]
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=[], help="case name (repeatable) or 'all'")
    parser.add_argument("--out", type=Path, default=None, help="folder for case-<name>.json")
    parser.add_argument("--report", type=Path, default=None, help="collect a folder's case files into a table")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device (CPU check of the code)")
    parser.add_argument("--list", action="store_true", help="print the case names")
    parser.add_argument("--recipe", help="CLI mode: recipe to run under torchrun")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(c.name for c in CASES))
        return 0
    if args.recipe:
        return cli_run(args)
    names = [c.name for c in CASES] if "all" in args.case else args.case
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(BY_NAME)}")
    if names and args.out is None:
        parser.error("--case needs --out")
    if not names and args.report is None:
        parser.error("give --case NAME --out DIR, --report DIR, --list, or --recipe")
    failed = [name for name in names if "error" in run_case(BY_NAME[name], args.out, args.smoke)]
    if args.report is not None:
        report(args.report)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
