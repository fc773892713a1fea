"""Throughput of ``prepare`` (read + clean + filter + dedup + chunk) on the shared real corpora, 1 and 2 workers,
side by side with datatrove (HuggingFace's web-data pipeline) doing the per-document part on the same input.

    python bench/prepare_throughput.py [--mb 8] [--workers 1 2] [--datatrove-path DIR]

Input: the shared corpora (``../shared/data/corpora``: PubMed abstracts and NCBI-disease abstracts in English;
Chinese doctor Q&A in GB18030 and an infectious-disease textbook), written as JSONL and replicated to ``--mb``
megabytes (the replicas are exact duplicates, so the merge's dedup also has real work).

Reference: datatrove 0.10.1 (``pip install --target DIR datatrove==0.10.1``, default DIR $TMPDIR/dt_pkgs; loaded in a subprocess
from ``--datatrove-path``), on the English half only, one process: ``GopherRepetitionFilter`` +
``GopherQualityFilter`` + MinHash stage-1 signatures (``MinhashDedupSignature.get_shingles/get_signature``,
5-gram words, 14 x 8 hashes, SHA-1 32-bit shingle hashes as datasketch uses: the installed xxhash rejects the
str that datatrove's default xxhash64 passes it) per document. Its word tokenizer is replaced by ``str.split`` (its default needs NLTK
punkt data, which cannot be downloaded here; its Chinese one needs spaCy + jieba). Our side of the ratio is the
shard pass (clean + all filters + exact key + MinHash) on the same English documents with one worker; the
end-to-end figures add the reader, the global dedup, chunking and the writes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPORA = Path(os.environ.get("HUATUO_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpora"


def build_corpus(out: Path, megabytes: float) -> dict[str, Path]:
    """en.jsonl and zh.jsonl, each about ``megabytes / 2`` MB of UTF-8, from the shared corpora."""
    from preprocessing.prepare import Source, read_source

    raw = {
        "en": [Source("pubmed", "literature", "en", str(CORPORA / "en/pubmed_abstracts_299.json")),
               Source("ncbi", "literature", "en", str(CORPORA / "en/ncbi_disease_train.pubtator.txt"))],
        "zh": [Source("qa", "web", "zh", str(CORPORA / "zh/internal_medicine_qa.gb18030.txt")),
               Source("textbook", "book", "zh", str(CORPORA / "zh/infectious_disease_textbook.txt"))],
    }
    files = {}
    for lang, sources in raw.items():
        docs = [t for s in sources for _, t in read_source(s)]
        size = sum(len(t.encode()) for t in docs)
        copies = max(1, round(megabytes / 2 * 1e6 / size))
        path = out / f"{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for k in range(copies):
                for i, t in enumerate(docs):
                    fh.write(json.dumps({"id": f"{k}-{i}", "text": t}, ensure_ascii=False) + "\n")
        files[lang] = path
    return files


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the worker pool is joined at the end of each pass)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(files: dict[str, Path], langs: list[str], workers: int, work: Path) -> dict:
    from preprocessing.prepare import PrepareConfig, Source, merge, run_shard
    from preprocessing.sharding import Shard

    sources = [Source(f"{lang}", "web", lang, str(files[lang])) for lang in langs]
    out = work / f"ours-{'-'.join(langs)}-{workers}"
    c0, t0 = cpu_seconds(), time.perf_counter()
    run_shard(sources, out, PrepareConfig(), Shard(), workers=workers)
    c1, t1 = cpu_seconds(), time.perf_counter()
    report = merge(out, 1)
    c2, t2 = cpu_seconds(), time.perf_counter()
    return {"docs": sum(report["read"].values()), "bytes": sum(files[lang].stat().st_size for lang in langs),
            "shard_pass_s": t1 - t0, "merge_s": t2 - t1, "total_s": t2 - t0, "shard_pass_cpu": c1 - c0,
            "total_cpu": c2 - c0,
            "kept": report["kept_documents"], "dropped": {k: v for k, v in report["dropped"].items() if v}}


def reference_main(path: str) -> None:
    """Runs inside the subprocess that has datatrove on its path: per-document Gopher filters + MinHash signature."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitTokenizer(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return text.split("\n")

        def span_tokenize(self, text):
            raise NotImplementedError

    tok = SplitTokenizer()
    rep, qual = GopherRepetitionFilter(language=tok), GopherQualityFilter(language=tok)
    config = MinhashConfig(hash_config=HashConfig(precision=32, hash_fc="sha1"))  # as datasketch (ours)
    sig = MinhashDedupSignature(output_folder=tempfile.mkdtemp(), config=config, language=tok)
    docs = [json.loads(line) for line in open(path, encoding="utf-8")]
    t0, c0 = time.perf_counter(), time.process_time()
    kept = 0
    for d in docs:
        doc = Document(text=d["text"], id=d["id"])
        ok = rep.filter(doc) is True and qual.filter(doc) is True
        shingles = sig.get_shingles(doc.text)
        if shingles.size:  # as its stage-1 run(): documents with no 5-gram get no signature
            sig.get_signature(shingles)
        kept += ok
    print(json.dumps({"docs": len(docs), "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "passed_filters": kept}))


def run_reference(en: Path, datatrove_path: str) -> dict | None:
    env = dict(os.environ, PYTHONPATH=datatrove_path)
    proc = subprocess.run([sys.executable, __file__, "--reference-only", str(en)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        print(f"datatrove reference not run ({proc.stderr.strip().splitlines()[-1:]}); install it with "
              f"`pip install --target {datatrove_path} datatrove==0.10.1`", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=8.0, help="corpus size in MB (half English, half Chinese)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--datatrove-path", default=os.path.join(tempfile.gettempdir(), "dt_pkgs"), help="a pip --target folder holding datatrove")
    ap.add_argument("--reference-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_only:
        return reference_main(args.reference_only)
    if not CORPORA.exists():
        sys.exit(f"shared corpora missing: {CORPORA}")
    import datasketch  # noqa: F401  (imported before timing: it pulls in scipy, ~1.5 s, once per process)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = build_corpus(work, args.mb)
        print(f"corpus: en {files['en'].stat().st_size / 1e6:.1f} MB, zh {files['zh'].stat().st_size / 1e6:.1f} MB "
              f"(JSONL, replicated shared corpora); cpu_count={os.cpu_count()}")
        print(f"{'run':<26}{'workers':>8}{'docs':>8}{'wall s':>8}{'docs/s':>8}{'MB/s':>6}{'CPU s':>7}"
              f"{'MB/CPU-s':>9}{'shard pass':>11}{'merge':>7}")
        results = {}
        for langs in (["en", "zh"], ["en"]):
            for w in args.workers:
                r = run_ours(files, langs, w, work)
                results[(tuple(langs), w)] = r
                print(f"{'ours ' + '+'.join(langs) + ' end-to-end':<26}{w:>8}{r['docs']:>8}{r['total_s']:>8.2f}"
                      f"{r['docs'] / r['total_s']:>8.0f}{r['bytes'] / 1e6 / r['total_s']:>6.2f}{r['total_cpu']:>7.2f}"
                      f"{r['bytes'] / 1e6 / r['total_cpu']:>9.2f}{r['shard_pass_s']:>11.2f}{r['merge_s']:>7.2f}")
        print("drops (en+zh, 1 worker):", results[(("en", "zh"), args.workers[0])]["dropped"])
        ref = run_reference(files["en"], args.datatrove_path)
        if ref:
            ours = results[(("en",), 1)] if (("en",), 1) in results else None
            en_mb = files["en"].stat().st_size / 1e6
            print(f"{'datatrove en per-doc':<26}{1:>8}{ref['docs']:>8}{ref['seconds']:>8.2f}"
                  f"{ref['docs'] / ref['seconds']:>8.0f}{en_mb / ref['seconds']:>6.2f}{ref['cpu']:>7.2f}"
                  f"{en_mb / ref['cpu']:>9.2f}")
            if ours:
                print(f"ratio ours/datatrove, en, 1 worker, per-document pass: {ref['seconds'] / ours['shard_pass_s']:.2f}x "
                      f"by wall time, {ref['cpu'] / ours['shard_pass_cpu']:.2f}x by CPU time (ours end-to-end incl. "
                      f"read, dedup, chunk, writes: {ref['seconds'] / ours['total_s']:.2f}x wall, "
                      f"{ref['cpu'] / ours['total_cpu']:.2f}x CPU)")


if __name__ == "__main__":
    main()
