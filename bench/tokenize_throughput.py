"""Our ``tokenize`` vs Megatron-LM's ``tools/preprocess_data.py --append-eod``, side by side on the same natural input.

Input: a natural, non-replicated corpus of about ``--target-mb`` MB (``bench/tokenize_corpus.py``: the shared
corpora once each, Python source and docs of the installed packages, generated Chinese, edge cases; no document
twice), built once into ``--workdir`` and reused while its recipe and bytes are unchanged. A replicated corpus
would measure our segment cache (every later copy is all hits), not tokenisation.

For every tokenizer (SentencePiece models; Megatron-LM's ``GPTSentencePieceTokenizer``) and worker count, both tools
run as fresh processes, alternated ``--repeats`` times so load changes hit both. Each tool prints a line after its
Python imports and before any work (Megatron-LM: ``Opening <input>``; ours: ``tokenize: opening ...``); the bench
reads the process's CPU time from ``/proc`` at that line. Figures:

- start-up: CPU and wall seconds up to that line (imports: torch and megatron for Megatron-LM, numpy for ours).
- CPU net: CPU seconds of the whole process tree (``getrusage(RUSAGE_CHILDREN)``: Megatron-LM's N workers and its
  writer process, our N workers) minus the start-up CPU: tokenizer load, pool start, reading, tokenisation,
  writing. The main figure: on a shared machine wall time follows the load and favours the tool with more
  processes (Megatron-LM's N workers + its writer vs our N).
- work: wall seconds from that line to the exit.
- ratio: Megatron-LM / ours, per repeat (the two runs next to each other), reported as median [min-max].
- floor: in this process, SentencePiece's own ``encode`` of every document, one call each (what Megatron-LM's
  workers call per document), CPU seconds: the tokenizer library's share of Megatron-LM's CPU net, and what a
  tool that encodes every document with the library cannot go below.

The ``.bin``/``.idx`` of both tools are compared byte for byte (and ours across worker counts); a mismatch is
printed and makes the exit status 1.

Megatron-LM needs a checkout (``--megatron-lm DIR``, put first on PYTHONPATH for its process only) whose
``megatron.training`` imports: ``git archive core_v0.16.1 megatron tools | tar -x -C DIR`` from a clone (the tag
of the megatron-core we pin), then ``pip install --target DIR six triton`` (its imports need them; no GPU is used).
Without ``--megatron-lm`` only our side runs.

``--profile`` instead splits our CPU time (one in-process run, 1 worker) into SentencePiece's ``encode``,
``json.loads`` and the rest (segment cache in numpy, reading, writing), beside the floor.

Usage: python bench/tokenize_throughput.py --megatron-lm DIR [--tokenizers baichuan2 yi llama2] [--workers 1 2]
       [--repeats 3] [--target-mb 32] [--workdir DIR] [--profile]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HUATUO_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "bench"))

from tokenize_corpus import build_corpus  # noqa: E402


def corpus(workdir: Path, target_mb: float) -> dict:
    """The bench input, rebuilt only when the recipe output changed (the manifest records size and SHA-256)."""
    path, manifest = workdir / "input.jsonl", workdir / "input.manifest.json"
    recipe = (ROOT / "bench" / "tokenize_corpus.py").read_bytes()
    key = {"target_mb": target_mb, "recipe_bytes": len(recipe), "recipe_hash": hash_bytes(recipe)}
    if manifest.exists() and path.exists():
        old = json.loads(manifest.read_text())
        if old.get("key") == key and old["bytes"] == path.stat().st_size and old["sha256"] == hash_file(path):
            return old
    info = build_corpus(path, target_mb, SHARED)
    info["key"] = key
    manifest.write_text(json.dumps(info, indent=1))
    return info


def hash_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path) -> str:
    from megatron_huatuo.data.order_index import _sha256_file  # the project's one streaming SHA-256 of a file

    return _sha256_file(path)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MARKERS = ("Opening ", "tokenize: opening ")  # printed by each tool after its imports, before any work


def run(cmd, env=None) -> dict:
    """One run: wall seconds, and CPU seconds of the whole process tree, split at the tool's marker line.

    Start-up = up to the marker (Python imports: torch and megatron for Megatron-LM, numpy for ours; no child
    process exists yet); work = from the marker to the exit (tokenizer load, worker pool, tokenisation, writing).
    """
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    c0 = _cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marked = None
    for line in proc.stdout:
        if marked is None and line.startswith(MARKERS):
            marked = (time.perf_counter(), _process_cpu(proc.pid))
    err = proc.stderr.read()
    rc = proc.wait()
    t1 = time.perf_counter()
    if rc != 0 or marked is None:
        raise SystemExit(f"failed ({rc}, marker {'seen' if marked else 'missing'}): {' '.join(map(str, cmd))}\n"
                         f"{err[-3000:]}")
    cpu = _cpu() - c0
    return {"wall_s": t1 - t0, "work_s": t1 - marked[0], "cpu_s": cpu, "startup_cpu_s": marked[1],
            "startup_wall_s": marked[0] - t0, "cpu_net_s": cpu - marked[1]}


def ours(inp: Path, prefix: Path, tokenizer: str, workers: int):
    return [sys.executable, "-m", "preprocessing.dataset", "tokenize", "--input", str(inp), "--tokenizer", tokenizer,
            "--output-prefix", str(prefix), "--workers", str(workers)]


def megatron(checkout: Path, inp: Path, prefix: Path, tokenizer: str, workers: int):
    return [sys.executable, str(checkout / "tools" / "preprocess_data.py"), "--input", str(inp), "--output-prefix",
            str(prefix), "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", tokenizer,
            "--workers", str(workers), "--append-eod", "--log-interval", "100000000"]


def same(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(f"{a}_text_document{e}", f"{b}_text_document{e}", shallow=False) for e in (".bin", ".idx"))


def floor_cpu(inp: Path, tokenizer: str) -> float:
    """CPU seconds of ``sp.encode`` on every text of the input, one call each (Megatron-LM's per-document call)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    texts = []
    with open(inp, "rb") as fh:
        for line in fh:
            value = json.loads(line)["text"]
            texts += value if isinstance(value, list) else [value]
    t0 = time.process_time()
    for t in texts:
        sp.encode(t)
    return time.process_time() - t0


class _Timed:
    """A callable that adds its CPU seconds to ``spent[key]`` (to split one in-process run by library)."""

    def __init__(self, fn, spent: dict, key: str):
        self.fn, self.spent, self.key = fn, spent, key

    def __call__(self, *args, **kwargs):
        t0 = time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.spent[self.key] += time.process_time() - t0


def profile_ours(inp: Path, tokenizer: str, prefix: Path) -> dict:
    """CPU seconds of one in-process ``tokenize`` (1 worker, tokenizer load included), and how much of it is inside
    SentencePiece's ``encode`` (the distinct segments the cache misses) and inside ``json.loads``. Calls are timed
    one by one, which costs ~1 us per call: a few thousand sentencepiece calls and one ``json.loads`` per line."""
    import types

    from megatron_huatuo.data import segment_cache
    from preprocessing.dataset import tokenize as tk

    spent = {"sentencepiece": 0.0, "json": 0.0}

    class Processor:  # the cache's SentencePieceProcessor, with encode timed
        def __init__(self, sp):
            self.sp, self.encode = sp, _Timed(sp.encode, spent, "sentencepiece")

        def __getattr__(self, name):
            return getattr(self.sp, name)

    init, json_mod = segment_cache.SegmentCache.__init__, tk.json

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.sp = Processor(self.sp)

    segment_cache.SegmentCache.__init__ = timed_init
    tk.json = types.SimpleNamespace(loads=_Timed(json.loads, spent, "json"))
    try:
        t0 = time.process_time()
        tk.tokenize(tk.TokenizeConfig([str(inp)], tokenizer, str(prefix), workers=1))
        total = time.process_time() - t0
    finally:
        segment_cache.SegmentCache.__init__, tk.json = init, json_mod
    return {"total": total, **spent, "rest": total - sum(spent.values())}


def spread(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{statistics.median(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]" if len(xs) > 1 else f"{xs[0]:.2f}x"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _med(rs, key):
    return statistics.median(r[key] for r in rs)


def _rng(rs, key, fmt="{:.2f}"):
    vals = [r[key] for r in rs]
    return fmt.format(statistics.median(vals)) + (f" [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"
                                                   if len(vals) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--megatron-lm", type=Path, default=None, help="Megatron-LM checkout directory")
    ap.add_argument("--tokenizers", nargs="+", default=["baichuan2", "yi", "llama2"],
                    help="shared tokenizer names (tokenizers/NAME/tokenizer.model) or .model paths")
    ap.add_argument("--target-mb", type=float, default=32.0, help="size of the natural corpus (MB of JSONL)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3, help="alternated runs per tool, tokenizer and worker count")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tokenize_bench")
    ap.add_argument("--profile", action="store_true",
                    help="only split our CPU time (1 worker, in-process) into sentencepiece / json / the rest")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = corpus(args.workdir, args.target_mb)
    inp, n_docs, mb = Path(info["path"]), info["documents"], info["bytes"] / 1e6
    parts = ", ".join(f"{k} {v['documents']} docs {v['bytes'] / 1e6:.1f} MB" for k, v in info["components"].items())
    print(f"input: {inp}, {n_docs} documents, {mb:.1f} MB, sha256 {info['sha256'][:16]}; {parts}")
    if args.profile:
        for name in args.tokenizers:
            model = name if name.endswith(".model") else str(SHARED / "tokenizers" / name / "tokenizer.model")
            floor = floor_cpu(inp, model)
            for _ in range(args.repeats):
                p = profile_ours(inp, model, args.workdir / "profile")
                print(f"[{Path(model).parent.name}] ours in-process, 1 worker: {p['total']:.2f} CPU-s; inside "
                      f"sentencepiece encode {p['sentencepiece']:.2f} ({p['sentencepiece'] / p['total']:.0%}), "
                      f"json.loads {p['json']:.2f} ({p['json'] / p['total']:.0%}), rest {p['rest']:.2f} "
                      f"({p['rest'] / p['total']:.0%}); sp.encode per document (floor) {floor:.2f} CPU-s", flush=True)
        return
    env = None
    if args.megatron_lm is None:
        print("Megatron-LM comparison skipped: pass --megatron-lm DIR (a Megatron-LM checkout; see the docstring)")
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.megatron_lm)]
                                                           + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    ok, rows = True, []
    for name in args.tokenizers:
        model = name if name.endswith(".model") else str(SHARED / "tokenizers" / name / "tokenizer.model")
        label = Path(model).parent.name if not name.endswith(".model") else Path(model).name
        tools = {"ours": lambda p, w: run(ours(inp, p, model, w))}
        if env is not None:
            tools["megatron"] = lambda p, w: run(megatron(args.megatron_lm, inp, p, model, w), env)
        floor = floor_cpu(inp, model)
        print(f"[{label}] floor: sentencepiece encode of every document, one call each: {floor:.2f} CPU-s "
              f"({mb / floor:.2f} MB per CPU-s); load {load()}", flush=True)
        for w in args.workers:
            runs = {k: [] for k in tools}
            for _ in range(args.repeats):
                for k, fn in tools.items():  # alternated, so load changes hit both
                    runs[k].append(fn(args.workdir / f"{k}_{label}_w{w}", w))
            row = {"tokenizer": label, "workers": w, "floor_cpu_s": floor, "load": load(), "runs": runs}
            for k, rs in runs.items():
                print(f"[{label}] workers {w} {k:>8}: CPU net {_rng(rs, 'cpu_net_s')} s "
                      f"= {mb / _med(rs, 'cpu_net_s'):.2f} MB per CPU-s, floor/net {floor / _med(rs, 'cpu_net_s'):.2f}; "
                      f"work {_rng(rs, 'work_s')} s; start-up {_rng(rs, 'startup_cpu_s', '{:.1f}')} CPU-s, "
                      f"{_rng(rs, 'startup_wall_s', '{:.1f}')} s wall", flush=True)
            if "megatron" in runs:
                pairs = list(zip(runs["megatron"], runs["ours"]))
                row["ratio_cpu"] = [m["cpu_net_s"] / o["cpu_net_s"] for m, o in pairs]
                row["ratio_work"] = [m["work_s"] / o["work_s"] for m, o in pairs]
                row["identical"] = same(args.workdir / f"ours_{label}_w{w}", args.workdir / f"megatron_{label}_w{w}")
                ok &= row["identical"]
                print(f"[{label}] workers {w}: byte-identical .bin/.idx: {row['identical']}; Megatron-LM / ours: "
                      f"CPU net {spread(row['ratio_cpu'])}, work {spread(row['ratio_work'])}; load {row['load']}",
                      flush=True)
            rows.append(row)
        if len(args.workers) > 1:
            base = args.workdir / f"ours_{label}_w{args.workers[0]}"
            same_w = all(same(base, args.workdir / f"ours_{label}_w{w}") for w in args.workers[1:])
            ok &= same_w
            print(f"[{label}] ours identical across worker counts {args.workers}: {same_w}")
    print(f"\n{mb:.1f} MB natural input; medians of {args.repeats} alternated runs, ratios as median [min-max] of "
          "the per-repeat ratios; CPU net = CPU-s of the process tree after the start-up marker")
    print("| tokenizer | workers | ours CPU net | ours MB per CPU-s | Megatron-LM CPU net | ratio CPU net | "
          "ours work | Megatron-LM work | ratio work | sp.encode floor | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, m = r["runs"]["ours"], r["runs"].get("megatron")
        cells = [r["tokenizer"], str(r["workers"]), f"{_med(o, 'cpu_net_s'):.2f} s",
                 f"{mb / _med(o, 'cpu_net_s'):.2f}", f"{_med(m, 'cpu_net_s'):.2f} s" if m else "-",
                 spread(r.get("ratio_cpu", [])), f"{_med(o, 'work_s'):.2f} s",
                 f"{_med(m, 'work_s'):.2f} s" if m else "-", spread(r.get("ratio_work", [])),
                 f"{r['floor_cpu_s']:.2f} s", str(r.get("identical", "-"))]
        print("| " + " | ".join(cells) + " |")
    print("start-up (imports, before the marker; CPU-s / wall s, medians): " + "; ".join(
        f"{r['tokenizer']} w{r['workers']}: " + ", ".join(
            f"{k} {_med(rs, 'startup_cpu_s'):.1f}/{_med(rs, 'startup_wall_s'):.1f}" for k, rs in r["runs"].items())
        for r in rows))
    print(json.dumps({"input": {k: v for k, v in info.items() if k != "key"}, "rows": rows}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
