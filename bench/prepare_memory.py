"""Peak memory of ``prepare`` on one very large document (issue 10), beside an older checkout on the same input.

    python bench/prepare_memory.py [--mb 5 50] [--lang zh en] [--reference DIR --reference-mb 5]

Input: one document of ``--mb`` megabytes of UTF-8 made of the shared corpora's words (en: PubMed and NCBI-disease
abstracts) or characters (zh: the infectious-disease textbook and doctor Q&A) drawn with their corpus frequencies
(``document``): the corpora's vocabulary, not one corpus replicated, and it passes every filter, so every stage
runs (repetition n-grams, MinHash, chunking, the merge). Each run is the real CLI (``python -m preprocessing prepare --workers 1``) in a fresh process;
its peak RSS is VmHWM at exit, its baseline the same command on a 3 KB document. Printed: peak, peak minus
baseline as a multiple of the document, CPU seconds of the process.

``--reference DIR``: a checkout of an older version (``git worktree add DIR <commit>``) run on the same inputs
(only up to ``--reference-mb``: before the fix a 5 MB Chinese document took ~2 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPORA = Path(os.environ.get("HUATUO_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpora"
RUN = """
import atexit, os, runpy, sys
atexit.register(lambda: print("PEAK_KB", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1],
                              "CPU_S", sum(os.times()[:2]), file=sys.stderr))
sys.argv[0] = "preprocessing"
runpy.run_module("preprocessing", run_name="__main__")
"""


def corpus_tokens(lang: str) -> list[str]:
    """Every word (en) or CJK character (zh) of the shared corpora, in order, repeats included."""
    from preprocessing.prepare import Source, read_source

    files = {"zh": [("qa", "zh/internal_medicine_qa.gb18030.txt"), ("book", "zh/infectious_disease_textbook.txt")],
             "en": [("pubmed", "en/pubmed_abstracts_299.json"), ("ncbi", "en/ncbi_disease_train.pubtator.txt")]}[lang]
    token = r"[\u4e00-\u9fff]" if lang == "zh" else r"[A-Za-z]+|[0-9]+"
    return [w for name, rel in files for _, t in read_source(Source(name, "book", lang, str(CORPORA / rel)))
            for w in re.findall(token, t)]


def document(lang: str, n_bytes: int, seed: int = 0) -> str:
    """``n_bytes`` of UTF-8: sentences of the corpora's words (en) or characters (zh) drawn with their corpus
    frequencies, a paragraph every 20 sentences. The corpora hold ~2 MB, so a 50 MB document cannot be real text
    without replicating it (which the repetition filters would drop before the later stages run)."""
    import numpy as np

    vocab, counts = np.unique(np.array(corpus_tokens(lang)), return_counts=True)
    rng = np.random.default_rng(seed)
    per_char = 3 if lang == "zh" else 6.5  # UTF-8 bytes per character (zh) or per word and space (en)
    words = vocab[rng.choice(len(vocab), size=int(n_bytes / per_char), p=counts / counts.sum())].tolist()
    out, i, k = [], 0, 0
    while i < len(words):
        n = int(rng.integers(10, 40) if lang == "zh" else rng.integers(8, 30))
        if lang == "zh":
            out.append("".join(words[i:i + n]) + "。")
        else:
            out.append(" ".join(words[i:i + n]).capitalize() + ". ")
        i, k = i + n, k + 1
        if k % 20 == 0:
            out.append("\n")
    return "".join(out)


def run(checkout: Path, work: Path, lang: str, text: str) -> dict:
    work.mkdir(parents=True)
    (work / "doc.jsonl").write_text(json.dumps({"id": "doc", "text": text}, ensure_ascii=False) + "\n", "utf-8")
    (work / "s.yaml").write_text(f"- {{name: doc, kind: book, lang: {lang}, path: doc.jsonl}}\n")
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUN, "prepare", "--sources", str(work / "s.yaml"), "--out",
                           str(work / "out"), "--workers", "1", "--quiet"], capture_output=True, text=True, env=env,
                          cwd=checkout)
    if proc.returncode:
        raise SystemExit(f"{checkout}: prepare failed: {proc.stderr[-2000:]}")
    fields = proc.stderr.rsplit("PEAK_KB", 1)[1].split()
    return {"peak_mib": int(fields[0]) / 1024, "cpu_s": float(fields[2]), "wall_s": time.monotonic() - start,
            "kept": json.loads(proc.stdout)["kept_documents"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[5, 50])
    ap.add_argument("--lang", nargs="+", default=["zh", "en"])
    ap.add_argument("--reference", type=Path, default=None, help="an older checkout to run side by side")
    ap.add_argument("--reference-mb", type=float, default=5)
    args = ap.parse_args()
    checkouts = [("ours", REPO)] + ([("reference", args.reference.resolve())] if args.reference else [])
    print("| version | lang | document MB | peak RSS MiB | baseline MiB | (peak - baseline) / document | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.lang:
            small = document(lang, 3000)
            for mb in args.mb:
                text = document(lang, int(mb * (1 << 20)))
                doc_mib = len(text.encode()) / (1 << 20)
                for name, checkout in checkouts:
                    if name == "reference" and mb > args.reference_mb:
                        continue
                    base = run(checkout, Path(tmp) / f"{name}-{lang}-{mb}-base", lang, small)
                    r = run(checkout, Path(tmp) / f"{name}-{lang}-{mb}", lang, text)
                    assert r["kept"] == 1, "the document must pass every filter so that every stage runs"
                    print(f"| {name} | {lang} | {doc_mib:.1f} | {r['peak_mib']:.0f} | {base['peak_mib']:.0f} | "
                          f"{(r['peak_mib'] - base['peak_mib']) / doc_mib:.1f}x | {r['cpu_s']:.1f} | "
                          f"{r['wall_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
