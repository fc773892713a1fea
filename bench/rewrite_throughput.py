"""Requests/s of the rewrite job against the fake OpenAI server (fixed reply latency), beside naive references.

Ours: ``rewrite_file`` (async, semaphore, cache writes, checks, ordered commit) with a fresh cache.
References, sending the same two requests per document (question, then answer):
- ``threads``: an ``openai``-style synchronous client, i.e. one shared ``httpx.Client`` called from a thread pool
  of the same size as our concurrency (what a straightforward script does);
- ``sequential``: one request after another (measured on the first ``--sequential-docs`` documents only).
The server runs in its own process (tests/preprocessing/fake_openai.py) so it does not share our GIL.

Usage: python bench/rewrite_throughput.py [--docs 1000] [--latency 0.05] [--concurrency 64 128 256]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from preprocessing.rewrite import RewriteConfig, load_prompts, rewrite_file  # noqa: E402
from preprocessing.rewrite.prompts import render  # noqa: E402


def start_server(latency: float):
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/preprocessing/fake_openai.py"), "--latency",
                             str(latency)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def write_docs(path: Path, n: int) -> list[dict]:
    docs = [{"id": f"doc-{i}", "source": "bench", "kind": "web", "lang": "zh" if i % 2 else "en", "chunk_id": 0,
             "text": (f"第{i}种疾病需要休息和补液。" * 10) if i % 2 else (f"Condition {i} needs rest and fluids. " * 8)}
            for i in range(n)]
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return docs


def reference(url: str, docs: list[dict], workers: int, model: str = "bench") -> int:
    """The naive way: a thread pool around a synchronous client; returns the number of requests sent."""
    prompts = load_prompts("rewrite_v1")
    client = httpx.Client(base_url=url + "/", timeout=60,
                          limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers))

    def ask(prompt: str) -> str:
        r = client.post("chat/completions", json={"model": model, "temperature": 0.7, "seed": 0,
                                                  "messages": [{"role": "user", "content": prompt}]})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    def one(doc: dict) -> int:
        q = ask(render(prompts.template("question", doc["lang"]), text=doc["text"][:400]))
        ask(render(prompts.template("answer", doc["lang"]), text=doc["text"][:600], question=q.strip()))
        return 2

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sent = sum(pool.map(one, docs))
    client.close()
    return sent


def timed(run) -> tuple:
    """(requests/s, CPU ms of this process per request) of ``run()``, which returns the number of requests."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = run()
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--sequential-docs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per arm (the dev box is shared)")
    args = ap.parse_args()
    proc, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            docs_path = Path(tmp) / "documents.jsonl"
            docs = write_docs(docs_path, args.docs)
            t0 = time.perf_counter()
            sent = reference(url, docs[:args.sequential_docs], 1)
            seq = sent / (time.perf_counter() - t0)
            print(f"latency {args.latency * 1000:.0f} ms, {args.docs} documents ({2 * args.docs} requests)")
            print(f"sequential reference: {seq:.0f} req/s")
            print("| concurrency | ours req/s | ours CPU ms/req | threads req/s | threads CPU ms/req | ours/threads "
                  "| ours/sequential |")
            print("|---|---|---|---|---|---|---|")
            for c in args.concurrency:
                ours, threads = (0.0, 0.0), (0.0, 0.0)
                for rep in range(args.repeats):
                    cfg = RewriteConfig(base_url=url, model="bench", concurrency=c, timeout=60)
                    out = Path(tmp) / f"run-{c}-{rep}"
                    ours = max(ours, timed(lambda: rewrite_file(docs_path, out, cfg, out / "cache")
                                           ["counts"]["requests"]["sent"]))
                    threads = max(threads, timed(lambda: reference(url, docs, c)))
                print(f"| {c} | {ours[0]:.0f} | {ours[1]:.2f} | {threads[0]:.0f} | {threads[1]:.2f} "
                      f"| {ours[0] / threads[0]:.2f} | {ours[0] / seq:.1f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
