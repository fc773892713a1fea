"""rewrite against a local fake OpenAI-compatible server: retries on 429/500, cache-based
resume after a stop (no request is paid twice) and byte-identical output, the key never on disk."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from huatuo_testing import REPO_ROOT
from preprocessing.rewrite import BudgetExhausted, RewriteConfig, rewrite_file


class FakeServer:
    """Answers deterministically from the prompt; fails every 3rd request with 429 and the 5th with 500."""

    def __init__(self):
        self.requests = 0
        self.ok = 0
        self.keys = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.keys.add(self.headers.get("Authorization"))
                server.requests += 1
                n = server.requests
                if n % 3 == 0 or n == 5:
                    self.send_response(429 if n % 3 == 0 else 500)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                if "Output only the question" in prompt or "只输出问题" in prompt:
                    topic = prompt.split("] ")[-1][:30]
                    content = f"What should I know about: {topic}?"
                else:
                    question = prompt.rsplit("Question: ", 1)[-1].rsplit("问题：", 1)[-1]
                    content = f"Answer to [{question}]"
                server.ok += 1
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def docs_file(tmp_path, n=6):
    rows = [{"id": f"doc-{i}", "source": "web.en", "kind": "web", "lang": "en", "chunk_id": 0,
             "text": f"[demo] Condition number {i} is treated with rest and fluids. " * 3} for i in range(n)]
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_budget_stop_then_resume_pays_each_request_once_and_matches_a_straight_run(server, tmp_path):
    docs = docs_file(tmp_path)
    cfg = RewriteConfig(base_url=server.url, model="fake", api_key="sk-secret", concurrency=1, backoff=0.01,
                        max_requests=5)
    with pytest.raises(BudgetExhausted):
        rewrite_file(docs, tmp_path / "out", cfg, tmp_path / "cache")
    assert not (tmp_path / "out" / "pairs.jsonl").exists()
    cfg.max_requests = None
    counts = rewrite_file(docs, tmp_path / "out", cfg, tmp_path / "cache")
    assert counts["cached_requests"] == 5 and counts["pairs"] == 6 and counts["failures"] == 0
    assert counts["paid_requests"] + 5 == server.ok  # each answered request paid exactly once

    straight = FakeServer()
    try:
        cfg2 = RewriteConfig(base_url=straight.url, model="fake", api_key="sk-secret", concurrency=3, backoff=0.01)
        rewrite_file(docs, tmp_path / "straight", cfg2, tmp_path / "cache2")
    finally:
        straight.close()
    assert (tmp_path / "out" / "pairs.jsonl").read_bytes() == (tmp_path / "straight" / "pairs.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [f"doc-{i}" for i in range(6)]
    assert all(r["answer"].startswith("Answer to [What should I know about") for r in rows)
    assert server.keys == {"Bearer sk-secret"}
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "sk-secret" not in cached


def test_cli_reports_bad_documents_with_file_and_line(tmp_path):
    bad = tmp_path / "documents.jsonl"
    bad.write_text('{"id": "a", "text": "x", "kind": "web", "lang": "en", "source": "s"}\n{"id": "b"}\n')
    proc = subprocess.run([sys.executable, "-m", "preprocessing", "rewrite", "--docs", str(bad), "--out",
                           str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "documents.jsonl:2: missing field(s)" in proc.stderr
