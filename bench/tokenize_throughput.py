"""Our ``tokenize`` vs Megatron-LM's ``tools/preprocess_data.py --append-eod``, side by side on the same input.

The input is real medical text from the shared data (PubMed and NCBI-disease abstracts, a Chinese textbook, Chinese
doctor Q&A), one JSON document per line, replicated to ``--target-mb``. Both tools run as fresh processes with the
same worker count and tokenizer (a SentencePiece model: Megatron-LM's ``GPTSentencePieceTokenizer``). The bench
checks that the ``.bin``/``.idx`` are byte-identical, and prints docs/s, MB/s (10^6 bytes of JSONL input) and the
ratio. "wall" is the whole process; "work" excludes the Python imports: for Megatron-LM from its "Opening <input>"
line (printed after its imports, before it builds its tokenizer and pool) to its exit, for ours the time our
``tokenize`` reports (also tokenizer load, pool, tokenisation, merge). On a shared machine wall times follow the
load (and favour the tool with more processes), so the bench also reports CPU seconds of the whole process tree,
net of the same command on a one-document input (imports, tokenizer load, pool start): "cpu" figures.

Megatron-LM needs a checkout (``--megatron-lm DIR``, put first on PYTHONPATH for its process only) whose
``megatron.training`` imports: e.g. ``git archive core_v0.16.1 megatron tools | tar -x -C DIR`` from a clone
(the tag of the megatron-core we pin), then ``pip install --target DIR six triton`` (its imports need them; no GPU
is used). Without ``--megatron-lm`` only our side runs and the comparison is skipped with a message.

Usage: python bench/tokenize_throughput.py --megatron-lm MEGATRON_LM_CHECKOUT [--tokenizer MODEL] [--target-mb 30]
       [--workers 1 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HUATUO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def corpus_documents() -> list:
    """Distinct documents from the shared corpora (English abstracts, Chinese prose and Q&A)."""
    docs = list(json.loads((SHARED / "corpora/en/pubmed_abstracts_299.json").read_text(encoding="utf-8")))
    abstract = []
    for line in (SHARED / "corpora/en/ncbi_disease_train.pubtator.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1] in ("t", "a"):
            abstract.append(parts[2])
            if parts[1] == "a":
                docs.append("\n".join(abstract))
                abstract = []
    lines = [x for x in (SHARED / "corpora/zh/infectious_disease_textbook.txt").read_text(encoding="utf-8").splitlines()
             if x.strip()]
    docs += ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    qa = (SHARED / "corpora/zh/internal_medicine_qa.gb18030.txt").read_bytes().decode("gb18030", errors="replace")
    docs += [b for b in qa.split("\n\n") if b.strip()]
    return docs


def write_input(path: Path, target_mb: float) -> tuple:
    docs = corpus_documents()
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs]
    one_copy = sum(len(x.encode()) for x in lines)
    copies = max(1, round(target_mb * 1e6 / one_copy)) if target_mb > 0 else 1
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(copies):
            fh.writelines(lines)
    return len(lines) * copies, path.stat().st_size, copies


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd, env=None) -> tuple:
    """(wall seconds, work seconds, CPU seconds of the process tree); see the module docstring."""
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    c0 = _cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened, out = None, []
    for line in proc.stdout:
        if opened is None and line.startswith("Opening "):
            opened = time.perf_counter()
        out.append(line)
    err = proc.stderr.read()
    rc = proc.wait()
    t1 = time.perf_counter()
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    cpu = _cpu() - c0
    if opened is not None:
        return t1 - t0, t1 - opened, cpu
    reported = [l for l in out if " docs/s, " in l and l.rstrip().endswith("worker(s)")]
    return t1 - t0, float(reported[-1].split(", ")[2].split()[0]), cpu


def ours(inp: Path, prefix: Path, tokenizer: str, workers: int):
    return [sys.executable, "-m", "preprocessing.dataset", "tokenize", "--input", str(inp), "--tokenizer", tokenizer,
            "--output-prefix", str(prefix), "--workers", str(workers)]


def megatron(checkout: Path, inp: Path, prefix: Path, tokenizer: str, workers: int):
    return [sys.executable, str(checkout / "tools" / "preprocess_data.py"), "--input", str(inp), "--output-prefix",
            str(prefix), "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", tokenizer,
            "--workers", str(workers), "--append-eod", "--log-interval", "100000000"]


def same(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(f"{a}_text_document{e}", f"{b}_text_document{e}", shallow=False) for e in (".bin", ".idx"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--megatron-lm", type=Path, default=None, help="Megatron-LM checkout directory")
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers/baichuan2/tokenizer.model"))
    ap.add_argument("--target-mb", type=float, default=30.0, help="replicate the corpus to about this size (0: once)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="runs per tool and worker count; the fastest is kept")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tokenize_bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    inp = args.workdir / "input.jsonl"
    n_docs, n_bytes, copies = write_input(inp, args.target_mb)
    print(f"input: {n_docs} documents, {n_bytes / 1e6:.1f} MB ({copies} copies of the corpus); "
          f"tokenizer {args.tokenizer}")
    env = None
    if args.megatron_lm is None:
        print("Megatron-LM comparison skipped: pass --megatron-lm DIR (a Megatron-LM checkout; see the docstring)")
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.megatron_lm)]
                                                           + [p for p in [os.environ.get("PYTHONPATH")] if p]))

    tools = {"ours": lambda i, p, w: run(ours(i, p, args.tokenizer, w))}
    if env is not None:
        tools["megatron"] = lambda i, p, w: run(megatron(args.megatron_lm, i, p, args.tokenizer, w), env)
    tiny = args.workdir / "one.jsonl"
    tiny.write_text(json.dumps({"text": "one short document"}) + "\n", encoding="utf-8")
    rows = []
    for w in args.workers:
        best, fixed = {}, {}
        for _ in range(args.repeats):
            for name, fn in tools.items():  # alternate the tools so load changes hit both
                f_cpu = fn(tiny, args.workdir / f"fixed_{name}_w{w}", w)[2]
                wall, work, cpu = fn(inp, args.workdir / f"{name}_w{w}", w)
                fixed[name] = min(fixed.get(name, f_cpu), f_cpu)
                if name not in best or work < best[name][1]:
                    best[name] = (wall, work, min(cpu, best.get(name, (0, 0, cpu))[2]))
                else:
                    best[name] = (*best[name][:2], min(cpu, best[name][2]))
        line = {"workers": w}
        for name, (wall, work, cpu) in best.items():
            net = cpu - fixed[name]
            # CPU of start-up varies by about a second between runs: below that the net figure means nothing.
            net = net if net > max(1.0, 0.25 * fixed[name]) else None
            line[name] = {"wall_s": wall, "work_s": work, "docs_per_s": n_docs / work, "mb_per_s": n_bytes / 1e6 / work,
                          "cpu_s": cpu, "cpu_fixed_s": fixed[name], "cpu_net_s": net,
                          "mb_per_cpu_s": n_bytes / 1e6 / net if net else None}
        if "megatron" in best:
            line["identical"] = same(args.workdir / f"ours_w{w}", args.workdir / f"megatron_w{w}")
            line["ratio_work"] = line["megatron"]["work_s"] / line["ours"]["work_s"]
            line["ratio_wall"] = line["megatron"]["wall_s"] / line["ours"]["wall_s"]
            nets = (line["megatron"]["cpu_net_s"], line["ours"]["cpu_net_s"])
            line["ratio_cpu"] = nets[0] / nets[1] if all(nets) else None
        rows.append(line)
        for name in best:
            r = line[name]
            cpu = (f"net {r['cpu_net_s']:6.1f} s, {r['mb_per_cpu_s']:5.2f} MB per CPU-s" if r["cpu_net_s"]
                   else "net n/a (start-up CPU dominates; use a larger --target-mb)")
            print(f"workers {w} {name:>8}: wall {r['wall_s']:6.1f} s, work {r['work_s']:6.1f} s, "
                  f"{r['docs_per_s']:7.0f} docs/s, {r['mb_per_s']:6.2f} MB/s (work); CPU {r['cpu_s']:6.1f} s "
                  f"(start-up {r['cpu_fixed_s']:.1f} s), {cpu}")
        if "megatron" in best:
            print(f"workers {w}: byte-identical .bin/.idx: {line['identical']}; speed ratio megatron/ours: "
                  f"work {line['ratio_work']:.2f}x, wall {line['ratio_wall']:.2f}x, CPU net "
                  + (f"{line['ratio_cpu']:.2f}x" if line["ratio_cpu"] else "n/a"))
    if len(args.workers) > 1:
        base = args.workdir / f"ours_w{args.workers[0]}"
        print("ours identical across worker counts: "
              f"{all(same(base, args.workdir / f'ours_w{w}') for w in args.workers[1:])}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
