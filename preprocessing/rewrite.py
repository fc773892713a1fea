"""``rewrite``: documents -> (question, answer) pairs through any OpenAI-compatible chat-completions server.

As the original HuatuoGPT-II does, each chunk costs two calls: one asks for a question that the text answers
(from ``text[:400]``; questions longer than 180 characters are rejected), one answers that question with
``text[:600]`` as a hidden reference (answers that mention the reference, "参考" / "reference text", are
rejected). Each call is tried ``tries`` times (the original: 2) when its output is rejected. Prompts exist per
language (the original asked for Chinese only); ``PROMPT_VERSION`` names them.

Robustness:
- HTTP 429 / 5xx / timeouts / connection errors are retried with exponential backoff (``Retry-After`` honoured).
- Every answered request is stored in an on-disk cache keyed by SHA-256 of (base model, prompt version, the exact
  messages); a killed and rerun job reuses them and never pays twice for the same request.
- ``--max-requests`` caps the paid (uncached) requests of one run: a budget.
- Output ``pairs.jsonl`` keeps the input order and is written through tmp + rename; chunks that failed are listed
  in ``failures.jsonl`` with the reason; they do not stop the job.
- The API key comes from ``HUATUO_REWRITE_API_KEY`` (or ``OPENAI_API_KEY``) and is never logged or cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROMPT_VERSION = "huatuo2-v1"

PROMPTS = {
    "zh": {
        "question": "请根据下面的医学文本，提出一个该文本能够回答的、有价值的医学问题。只输出问题本身，不要输出其他内容。\n\n文本：{text}",
        "answer": "请回答下面的医学问题，回答要准确、完整、通俗易懂。你可以利用给出的资料，但回答中不要提及“资料”“参考”或“文本”。\n\n"
                  "资料：{text}\n\n问题：{question}",
    },
    "en": {
        "question": "Read the medical text below and write one valuable medical question that the text answers. "
                    "Output only the question.\n\nText: {text}",
        "answer": "Answer the medical question below accurately, completely and in plain language. You may use the "
                  "material given, but do not mention the material, a reference or a text in your answer.\n\n"
                  "Material: {text}\n\nQuestion: {question}",
    },
}
REJECT_IN_ANSWER = ("参考", "reference text", "the material", "the text provided")


class RewriteError(RuntimeError):
    pass


class BudgetExhausted(RewriteError):
    pass


@dataclass
class RewriteConfig:
    base_url: str
    model: str = "gpt-3.5-turbo"
    api_key: Optional[str] = None
    concurrency: int = 8
    retries: int = 6  # HTTP-level retries per request
    backoff: float = 1.0  # seconds, doubled each retry
    timeout: float = 120.0
    tries: int = 2  # content-level tries per call (rejected outputs), as in the original
    temperature: float = 0.7
    max_requests: Optional[int] = None
    question_chars: int = 400
    answer_chars: int = 600
    max_question_len: int = 180


class Cache:
    """One JSON file per answered request, under a two-level fan-out of its key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, model: str, messages: list[dict], attempt: int) -> str:
        blob = json.dumps([model, PROMPT_VERSION, messages, attempt], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> Optional[str]:
        path = self.root / key[:2] / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8"))["content"] if path.exists() else None

    def put(self, key: str, content: str) -> None:
        path = self.root / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"content": content}, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)


class Client:
    def __init__(self, cfg: RewriteConfig, cache: Cache):
        import httpx

        self.cfg, self.cache = cfg, cache
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=cfg.timeout)
        self.lock = threading.Lock()
        self.paid = 0
        self.cached = 0

    def chat(self, prompt: str, attempt: int) -> str:
        import httpx

        messages = [{"role": "user", "content": prompt}]
        key = self.cache.key(self.cfg.model, messages, attempt)
        hit = self.cache.get(key)
        if hit is not None:
            with self.lock:
                self.cached += 1
            return hit
        with self.lock:
            if self.cfg.max_requests is not None and self.paid >= self.cfg.max_requests:
                raise BudgetExhausted(f"request budget of {self.cfg.max_requests} reached")
            self.paid += 1
        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature}
        delay = self.cfg.backoff
        for retry in range(self.cfg.retries + 1):
            try:
                resp = self.http.post("/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                error = f"{type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        content = resp.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise RewriteError(f"malformed response: {resp.text[:200]!r}") from None
                    self.cache.put(key, content)
                    return content
                if resp.status_code != 429 and resp.status_code < 500:
                    raise RewriteError(f"HTTP {resp.status_code}: {resp.text[:200]!r}")
                error = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            if retry == self.cfg.retries:
                raise RewriteError(f"gave up after {retry + 1} attempts: {error}")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


def rewrite_chunk(client: Client, doc: dict) -> dict:
    cfg = client.cfg
    prompts = PROMPTS.get(doc.get("lang", "zh"), PROMPTS["zh"])
    text = doc["text"]
    question = None
    for attempt in range(cfg.tries):
        q = client.chat(prompts["question"].format(text=text[:cfg.question_chars]), attempt).strip()
        if q and len(q) <= cfg.max_question_len:
            question = q
            break
    if question is None:
        raise RewriteError("no acceptable question")
    for attempt in range(cfg.tries):
        a = client.chat(prompts["answer"].format(text=text[:cfg.answer_chars], question=question), attempt).strip()
        if a and not any(bad in a for bad in REJECT_IN_ANSWER):
            return {"question": question, "answer": a, "kind": doc["kind"], "lang": doc["lang"],
                    "doc_id": doc["id"], "chunk_id": doc.get("chunk_id", 0), "source": doc["source"],
                    "model": cfg.model, "prompt_version": PROMPT_VERSION}
    raise RewriteError("no acceptable answer")


def rewrite_file(docs_path: str | Path, out_dir: str | Path, cfg: RewriteConfig, cache_dir: str | Path) -> dict:
    """Rewrite every chunk of ``documents.jsonl``; returns counts. Raises BudgetExhausted after writing nothing."""
    docs_path, out_dir = Path(docs_path), Path(out_dir)
    docs = []
    for lineno, line in enumerate(docs_path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                missing = [k for k in ("id", "text", "kind", "lang", "source") if k not in row]
            except json.JSONDecodeError as exc:
                raise RewriteError(f"{docs_path}:{lineno}: not valid JSON: {exc.msg}") from None
            if missing:
                raise RewriteError(f"{docs_path}:{lineno}: missing field(s) {missing}")
            docs.append(row)
    client = Client(cfg, Cache(cache_dir))
    results: list = [None] * len(docs)

    def work(i: int):
        try:
            results[i] = rewrite_chunk(client, docs[i])
        except BudgetExhausted:
            raise
        except RewriteError as exc:
            results[i] = exc

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        futures = [pool.submit(work, i) for i in range(len(docs))]
        budget_hit = None
        for f in futures:
            try:
                f.result()
            except BudgetExhausted as exc:
                budget_hit = exc
    if budget_hit is not None:
        raise BudgetExhausted(f"{budget_hit}; answered requests are cached in {cache_dir}: rerun to continue")
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [r for r in results if isinstance(r, dict)]
    failures = [{"doc_id": d["id"], "chunk_id": d.get("chunk_id", 0), "reason": str(r)}
                for d, r in zip(docs, results) if not isinstance(r, dict)]
    for name, rows in (("pairs.jsonl", pairs), ("failures.jsonl", failures)):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(out_dir / name)
    return {"chunks": len(docs), "pairs": len(pairs), "failures": len(failures), "paid_requests": client.paid,
            "cached_requests": client.cached}


def api_key_from_env() -> Optional[str]:
    return os.environ.get("HUATUO_REWRITE_API_KEY") or os.environ.get("OPENAI_API_KEY")
