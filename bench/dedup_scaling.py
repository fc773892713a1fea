"""Peak memory of every task of the staged dedup (``prepare-dedup``) beside the one-process ``prepare-merge``.

    python bench/dedup_scaling.py [--docs 100000 1000000] [--partitions 8 32] [--shards 8] [--work DIR]

For each corpus size: a synthetic Chinese + English corpus is generated (below), ``prepare --shard i/S`` runs once
per shard (the same shard outputs feed both engines), then ``prepare-merge`` (today's one process), then for each
partition count every stage's tasks one after another, each task its own process. Printed per task group: tasks,
the largest peak RSS of one task (``os.wait4``'s ``ru_maxrss``), CPU seconds (user + system of the tasks) and wall
seconds; the staged outputs are checked byte for byte against the merge's. Start-up (interpreter, imports: ~36 MiB,
~1 s) is inside every figure.

The corpus: word-bigram (English) and character-bigram (Chinese) Markov chains learnt from the shared real corpora
(PubMed and NCBI-disease abstracts; the doctor Q&A and the infectious-disease textbook; ``../shared/data``), sampled
into documents of 60-260 words / 150-650 characters, so every document is new text. Planted duplicates, each of an
earlier document chosen uniformly (so mostly in another shard): 8 % exact copies (case, spacing and punctuation
changed, which the exact key ignores), 10 % near copies (1-12 words or characters replaced, or a sentence dropped:
some above the 0.85 threshold, some below), 2 % chains (a near copy of a near copy).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPORA = Path(os.environ.get("HUATUO_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpora"
OUTPUTS = ("documents.jsonl", "rejects.jsonl", "report.json")


# --- the synthetic corpus ----------------------------------------------------------------------------------------
class Markov:
    """A bigram chain over tokens, sampled for many documents at once (numpy)."""

    def __init__(self, docs: list[list[str]]):
        vocab: dict[str, int] = {}
        pairs = []
        for toks in docs:
            ids = [vocab.setdefault(t, len(vocab)) for t in toks]
            pairs.extend(zip(ids, ids[1:]))
        self.words = np.array(list(vocab), dtype=object)
        pairs = np.unique(np.array(pairs, dtype=np.int64), axis=0, return_counts=True)
        (src_dst, counts) = pairs
        order = np.lexsort((src_dst[:, 1], src_dst[:, 0]))
        self.src, self.dst, counts = src_dst[order, 0], src_dst[order, 1], counts[order]
        self.cum = np.cumsum(counts)
        self.start = np.searchsorted(self.src, np.arange(len(vocab)))
        self.end = np.searchsorted(self.src, np.arange(len(vocab)), side="right")
        self.starters = np.unique(self.src)

    def sample(self, rng: np.random.Generator, lengths: np.ndarray) -> list[list[str]]:
        n, steps = len(lengths), int(lengths.max())
        out = np.empty((n, steps), dtype=np.int64)
        state = rng.choice(self.starters, n)
        for t in range(steps):
            out[:, t] = state
            lo, hi = self.start[state], self.end[state]
            dead = hi == lo
            base = np.where(lo > 0, self.cum[np.maximum(lo - 1, 0)], 0)
            top = self.cum[np.maximum(hi - 1, 0)]
            pick = np.searchsorted(self.cum, base + rng.random(n) * (top - base), side="right")
            state = np.where(dead, rng.choice(self.starters, n), self.dst[np.minimum(pick, len(self.dst) - 1)])
        return [list(self.words[row[:k]]) for row, k in zip(out, lengths)]


def _real_texts() -> dict[str, list[str]]:
    """Prose of the shared corpora: PubMed abstracts, the NCBI-disease titles and abstracts (its ``|t|``/``|a|``
    lines, not the annotation rows), the doctor Q&A and the textbook."""
    from preprocessing.prepare import Source, read_source

    pubtator = (CORPORA / "en/ncbi_disease_train.pubtator.txt").read_text(encoding="utf-8").splitlines()
    en = [t for _, t in read_source(Source("pubmed", "literature", "en", str(CORPORA / "en/pubmed_abstracts_299.json")))]
    en += [line.split("|", 2)[2] for line in pubtator if line.count("|") >= 2 and line.split("|")[1] in "ta"]
    zh = [t for name, path in (("qa", "zh/internal_medicine_qa.gb18030.txt"),
                               ("textbook", "zh/infectious_disease_textbook.txt"))
          for _, t in read_source(Source(name, "web", "zh", str(CORPORA / path)))]
    return {"en": en, "zh": zh}


def _join(lang: str, toks: list[str]) -> str:
    if lang == "zh":
        return "".join(toks)
    text = " ".join(toks)
    return re.sub(r" ([.,;:)\]%])", r"\1", text).replace("( ", "(")


def _tokens(lang: str, text: str) -> list[str]:
    return list(re.sub(r"\s+", "", text)) if lang == "zh" else re.findall(r"\w+|[^\w\s]", text)


def _exact_variant(lang: str, text: str, rng) -> str:
    """Same exact key (units ignore case, spacing and punctuation), other bytes."""
    if lang == "en":
        return text.upper() if rng.random() < 0.5 else text.replace(", ", " , ").replace(". ", ".  ")
    return text.replace("，", ",").replace("。", "! ") if rng.random() < 0.5 else " " + text.replace("。", "。 ")


def _near_variant(lang: str, toks: list[str], chain: Markov, rng) -> list[str]:
    toks = list(toks)
    if rng.random() < 0.3:  # drop a sentence
        ends = [i for i, t in enumerate(toks) if t in (".", "。")]
        if len(ends) >= 3:
            k = int(rng.integers(0, len(ends) - 1))
            return toks[:ends[k] + 1] + toks[ends[k + 1] + 1:]
    for _ in range(int(rng.integers(1, 13))):
        i = int(rng.integers(0, len(toks)))
        toks[i] = str(chain.words[rng.integers(0, len(chain.words))])
    return toks


def generate(path: Path, lang: str, n: int, seed: int) -> None:
    """``n`` documents of one language as JSONL ({id, text}), duplicates planted as the docstring says."""
    rng = np.random.default_rng(seed)
    chain = Markov([_tokens(lang, t) for t in _real_texts()[lang]])
    lo, hi = (60, 260) if lang == "en" else (150, 650)
    kept: list[list[str]] = []  # token lists of earlier documents, for planting (a bounded random sample)
    with open(path, "w", encoding="utf-8") as fh:
        done = 0
        while done < n:
            batch = min(20000, n - done)
            fresh = chain.sample(rng, rng.integers(lo, hi, batch))
            for j, toks in enumerate(fresh):
                i = done + j
                roll = rng.random()
                if kept and roll < 0.20:
                    src = kept[int(rng.integers(0, len(kept)))]
                    if roll < 0.08:
                        toks = src
                        text = _exact_variant(lang, _join(lang, src), rng)
                    else:
                        toks = _near_variant(lang, src, chain, rng)
                        if roll < 0.02 + 0.08:
                            toks = _near_variant(lang, toks, chain, rng)
                        text = _join(lang, toks)
                else:
                    text = _join(lang, toks)
                if len(kept) < 50000:
                    kept.append(toks)
                elif rng.random() < 0.05:
                    kept[int(rng.integers(0, len(kept)))] = toks
                fh.write(json.dumps({"id": f"{lang}-{i}", "text": text}, ensure_ascii=False) + "\n")
            done += batch


# --- measured tasks ------------------------------------------------------------------------------------------------
# The task's own peak: VmHWM of its address space, read at exit. (``wait4``'s ru_maxrss would not do: Linux carries
# the forking parent's peak across fork + exec into the child's figure.)
_WRAPPER = """import atexit, os, sys
def _hwm():
    with open(os.environ["HWM_FILE"], "w") as f:
        f.write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
atexit.register(_hwm)
from preprocessing.cli import main
sys.exit(main(sys.argv[1:]))
"""


def task(args: list[str]) -> dict:
    """``python -m preprocessing ARGS`` as its own process: peak RSS (MiB), CPU and wall seconds."""
    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)  # the task is reaped before the second reading
        return r.ru_utime + r.ru_stime

    with tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        c0, t0 = cpu(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "HWM_FILE": hwm.name})
        out, err = proc.communicate()
        wall, used = time.perf_counter() - t0, cpu() - c0
        rss = int(Path(hwm.name).read_text() or 0) / 1024
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{err.decode()[-3000:]}")
    return {"rss": rss, "cpu": used, "wall": wall, "stdout": out.decode()}


def group(name: str, runs: list[dict], rows: list, extra: str = "") -> None:
    row = {"stage": name, "tasks": len(runs), "max_rss_mib": max(r["rss"] for r in runs),
           "cpu_s": sum(r["cpu"] for r in runs), "wall_s": sum(r["wall"] for r in runs), "note": extra}
    rows.append(row)
    print(f"  {name:<22} {row['tasks']:>5} tasks  max RSS {row['max_rss_mib']:8.1f} MiB  CPU {row['cpu_s']:8.1f} s  "
          f"wall {row['wall_s']:8.1f} s  {extra}", flush=True)


def digest(out: Path) -> dict:
    return {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in OUTPUTS}


def bench(n: int, shards: int, partitions: list[int], work: Path, skip_merge: bool, pass_jobs: int,
          pass_only: bool = False) -> list:
    data = work / f"corpus-{n}"
    data.mkdir(parents=True, exist_ok=True)
    rows: list = []
    sources = data / "sources.json"
    if not sources.exists():
        t0 = time.perf_counter()
        for k, lang in enumerate(("zh", "en")):
            generate(data / f"{lang}.jsonl", lang, n // 2, seed=k)
        sources.write_text(json.dumps([{"name": f"web.{lang}", "kind": "web", "lang": lang, "path": f"{lang}.jsonl"}
                                       for lang in ("zh", "en")]))
        print(f"generated {n} documents in {time.perf_counter() - t0:.0f} s", flush=True)
    mb = sum((data / f"{lang}.jsonl").stat().st_size for lang in ("zh", "en")) / 1e6
    print(f"\n== {n} documents ({mb:.0f} MB), {shards} input shards", flush=True)
    prep = data / "prep"
    if not (prep / "shards" / f"shard_report.shard-{shards - 1:05d}-of-{shards:05d}.json").exists():
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(pass_jobs) as pool:  # the shard pass feeds both engines; not what is compared
            runs = list(pool.map(lambda i: task(["prepare", "--sources", str(sources), "--out", str(prep), "--shard",
                                                 f"{i}/{shards}", "--workers", "1", "--quiet"]), range(shards)))
        group("prepare --shard (pass)", runs, rows, f"{pass_jobs} at a time (CPU: only with 1)")
    ref = None
    if pass_only:
        return rows
    if not skip_merge:
        merged = task(["prepare-merge", "--out", str(prep), "--shards", str(shards), "--quiet"])
        summary = json.loads(merged["stdout"])
        group("prepare-merge (today)", [merged], rows,
              f"kept {summary['kept_documents']}, dropped exact {summary['dropped']['exact_duplicate']}, near "
              f"{summary['dropped']['near_duplicate']}")
        ref = digest(prep)
        (data / "merge-digest.json").write_text(json.dumps(ref))
    elif (data / "merge-digest.json").exists():  # the merge's outputs from an earlier run on this corpus
        ref = json.loads((data / "merge-digest.json").read_text())
    for p in partitions:
        shutil.rmtree(prep / "dedup", ignore_errors=True)
        print(f" staged, {p} partitions", flush=True)
        out = ["--out", str(prep)]
        group(f"signatures x{shards}", [task(["prepare-dedup", "signatures", *out, "--shard", f"{i}/{shards}",
                                              "--partitions", str(p)]) for i in range(shards)], rows, f"P={p}")
        runs = [task(["prepare-dedup", "pairs", *out, "--shards", str(shards), "--partition", f"{i}/{p}"])
                for i in range(p)]
        found = [json.loads(r["stdout"]) for r in runs]
        group(f"pairs x{p}", runs, rows, f"P={p}: {sum(f['pairs'] for f in found)} pairs, signatures read per task "
                                         f"max {max(f['signatures_read'] for f in found)}")
        d = task(["prepare-dedup", "decide", *out, "--shards", str(shards), "--partitions", str(p)])
        dec = json.loads(d["stdout"])
        group("decide x1", [d], rows, f"P={p}: {dec['involved']} involved documents, dropped {dec['dropped']}")
        group(f"write x{shards}", [task(["prepare-dedup", "write", *out, "--shard", f"{i}/{shards}"])
                                   for i in range(shards)], rows, f"P={p}")
        j = task(["prepare-dedup", "join", *out, "--shards", str(shards)])
        same = "" if ref is None else ("outputs == merge's" if digest(prep) == ref else "OUTPUTS DIFFER FROM MERGE")
        group("join x1", [j], rows, f"P={p}; {same}")
        if ref is not None and digest(prep) != ref:
            raise SystemExit("the staged dedup wrote other bytes than the merge")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[100000, 1000000])
    ap.add_argument("--partitions", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dedup_scaling")
    ap.add_argument("--skip-merge", action="store_true", help="no prepare-merge baseline; outputs are compared with "
                                                                  "the digests an earlier run saved, if any")
    ap.add_argument("--pass-jobs", type=int, default=1, help="shard-pass tasks run at once (its CPU figure is "
                                                                 "then not reliable; the dedup tasks always run alone)")
    ap.add_argument("--pass-only", action="store_true", help="only generate the corpus and run the shard pass (so "
                                                                 "that the measured tasks can later run alone)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    if not CORPORA.exists():
        raise SystemExit(f"needs the shared corpora at {CORPORA} (HUATUO_SHARED_DATA)")
    allrows = {}
    for n in args.docs:
        allrows[n] = bench(n, args.shards, args.partitions, args.work, args.skip_merge, args.pass_jobs,
                           args.pass_only)
    if args.json:
        args.json.write_text(json.dumps(allrows, indent=1))


if __name__ == "__main__":
    main()
