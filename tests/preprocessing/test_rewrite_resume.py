"""A rewrite job killed with SIGKILL mid-run and restarted gives the bytes of a straight run, and pays again only for
the requests that were in flight at the kill (the fake server counts what it answered, per prompt and seed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from fake_openai import FakeOpenAI
from huatuo_testing import REPO_ROOT
from test_rewrite import write_docs

DOCS, REQUESTS, CONCURRENCY = 30, 60, 4  # two requests per document, none rejected


def cached_files(cache):
    return sorted(p.name for p in cache.rglob("*.json")) if cache.exists() else []


def rewrite_cmd(docs, out, url):
    return [sys.executable, "-m", "preprocessing", "rewrite", "--docs", str(docs), "--out", str(out), "--base-url",
            url, "--model", "fake-model", "--concurrency", str(CONCURRENCY), "--backoff", "0.01"]


def test_sigkill_then_rerun_matches_a_straight_run_and_pays_only_the_requests_in_flight(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=DOCS)
    out, cache = tmp_path / "killed", tmp_path / "killed" / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("HUATUO_REWRITE_API_KEY", "OPENAI_API_KEY")}
    with FakeOpenAI(latency=0.1) as srv:
        proc = subprocess.Popen(rewrite_cmd(docs, out, srv.url), cwd=REPO_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while len(cached_files(cache)) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = len(cached_files(cache))
        assert 20 <= at_kill < REQUESTS, at_kill  # killed mid-run
        assert not (out / "pairs.jsonl").exists()  # no partial output in place
        srv.wait_idle()  # let the server finish the replies that were in flight
        served_first = sum(srv.served.values())
        assert at_kill <= served_first <= at_kill + CONCURRENCY

        srv.latency = 0.0
        rerun = subprocess.run(rewrite_cmd(docs, out, srv.url), cwd=REPO_ROOT, env=env, capture_output=True,
                               text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        summary = json.loads(rerun.stdout)
        # the rerun pays exactly for what the cache did not hold, and reuses the rest
        assert summary["counts"]["requests"]["sent"] == REQUESTS - at_kill
        assert summary["counts"]["requests"]["cached"] == at_kill
        assert sum(srv.served.values()) - served_first == REQUESTS - at_kill
        # every request answered at most twice overall: twice only for those in flight at the kill
        assert len(srv.served) == REQUESTS and max(srv.served.values()) <= 2
        assert sum(v - 1 for v in srv.served.values()) == served_first - at_kill <= CONCURRENCY

    with FakeOpenAI() as straight_srv:
        straight = subprocess.run(rewrite_cmd(docs, tmp_path / "straight", straight_srv.url), cwd=REPO_ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
    assert straight.returncode == 0, straight.stderr
    for name in ("pairs.jsonl", "rejects.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    pairs = (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(p)["doc_id"] for p in pairs] == [f"doc-{i}" for i in range(DOCS)]  # no loss, no duplicate
    killed_counts = json.loads((out / "summary.json").read_text())["counts"]
    straight_counts = json.loads((tmp_path / "straight" / "summary.json").read_text())["counts"]
    for key in ("documents", "pairs", "rejects", "tokens"):
        assert killed_counts[key] == straight_counts[key]
