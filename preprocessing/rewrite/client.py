"""Async chat-completions client: bounded concurrency, retries with backoff + jitter, cache, budget, usage.

Why async: a rewrite job is thousands of concurrent, mostly waiting, requests; one event loop with an
``httpx.AsyncClient`` and a semaphore holds hundreds of them open without a thread each.
Why jitter: when a server answers 429 to many requests at once, un-jittered clients all come back at the same
instant and are throttled again; each wait is drawn in [delay/2, delay], and never shorter than ``Retry-After``.
A request counts against the budget (``max_requests``) once, when it is first sent; its retries are not new requests.
Why several ``httpx.AsyncClient`` pools of ``POOL_SIZE`` connections instead of one: httpcore's connection pool
scans all its connections for every request state change (quadratic in the pool size); with one pool of 64
connections that scan cost ~9 ms of CPU per request in our profile, with pools of 4 about 1.3 ms (bench/RESULTS.md).
A request goes to the least busy pool, so a free connection is always there for the semaphore's holder.
Why a deadline and a byte cap of our own: httpx's timeouts bound each network read, so a server that sends one
byte every half second never times out; and ``post`` reads a whole body into memory, so a 600 MB reply costs
gigabytes. Each attempt (connect, send, headers, whole body) has ``timeout`` seconds in total, and the body is
streamed and abandoned (connection closed, nothing cached) past ``max_response_bytes``.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Optional

import httpx

from preprocessing.rewrite.cache import Cache, CachedReply, request_key
from preprocessing.rewrite.config import BudgetExhausted, JobIncomplete, RewriteConfig

log = logging.getLogger("preprocessing.rewrite")

POOL_SIZE = 4
FATAL_STATUS = (401, 403, 404)  # a wrong key, URL or model: every request would fail the same way


class RequestRejected(Exception):
    """The server refused this one request for good (400, 413, 422 ...): the document becomes a reject."""

    reason = "request_rejected"


class ResponseTooLarge(RequestRejected):
    """The reply passed ``max_response_bytes``: not read further, not cached, not retried (it would be paid again)."""

    reason = "response_too_large"


class _DeadlineExceeded(Exception):
    """One attempt took longer than ``timeout`` seconds in total."""


@dataclass(frozen=True)
class _Reply:
    """Status, headers and the (capped) body of one answered attempt."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, reply: CachedReply) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


@dataclass
class ClientStats:
    paid: int = 0  # requests sent by this run (each at most once: the budget counts these)
    cached: int = 0  # answered from the disk cache
    shared: int = 0  # an identical request already in flight in this run: its reply is reused
    retries: Counter = field(default_factory=Counter)  # retry reason -> count
    paid_usage: Usage = field(default_factory=Usage)


def retry_after_seconds(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(retry: int, cfg: RewriteConfig, retry_after: Optional[float], rng: random.Random) -> float:
    """Exponential backoff with "equal jitter" (uniform in [d/2, d]), at least what the server asked for."""
    delay = min(cfg.max_backoff, cfg.backoff * (2 ** retry))
    delay = delay / 2 + rng.random() * delay / 2
    return max(delay, retry_after) if retry_after is not None else delay


class ChatClient:
    """``async with ChatClient(cfg, cache, api_key) as c: reply = await c.chat(step, prompt, attempt)``."""

    def __init__(self, cfg: RewriteConfig, cache: Cache, api_key: Optional[str]):
        self.cfg, self.cache = cfg, cache
        self._api_key = api_key
        self.stats = ClientStats()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._inflight: Dict[str, asyncio.Future] = {}
        self._rng = random.Random()  # jitter only: never influences an output
        self._pools: list = []
        self._busy: list = []  # requests in flight per pool
        self._stopping: Optional[BaseException] = None

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    async def __aenter__(self) -> "ChatClient":
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        n = -(-self.cfg.concurrency // POOL_SIZE)
        per_pool = -(-self.cfg.concurrency // n)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = httpx.create_ssl_context()  # once: loading the CA bundle costs ~0.1 s per client
        self._pools = [httpx.AsyncClient(base_url=self.cfg.base_url.rstrip("/") + "/", headers=headers, verify=tls,
                                         timeout=httpx.Timeout(self.cfg.timeout), limits=limits) for _ in range(n)]
        self._busy = [0] * n
        return self

    async def __aexit__(self, *exc) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def _post(self, body: dict) -> _Reply:
        """One attempt, within ``timeout`` seconds from connecting to the last byte of the body."""
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await asyncio.wait_for(self._exchange(self._pools[i], body), self.cfg.timeout)
        except asyncio.TimeoutError:  # the exchange was cancelled: its response and connection are closed
            raise _DeadlineExceeded() from None
        finally:
            self._busy[i] -= 1

    async def _exchange(self, pool: httpx.AsyncClient, body: dict) -> _Reply:
        cap = self.cfg.max_response_bytes
        async with pool.stream("POST", "chat/completions", json=body) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(f"reply of {int(declared)} bytes announced, over --max-response-bytes {cap}")
            data = bytearray()
            async for chunk in resp.aiter_bytes():  # decoded bytes: a compressed reply is capped after inflating
                data += chunk
                if len(data) > cap:
                    raise ResponseTooLarge(f"reply over --max-response-bytes {cap}: stopped reading")
            return _Reply(resp.status_code, resp.headers, bytes(data))

    def stop(self, reason: BaseException) -> None:
        """Send no new request from now on (budget spent or fatal error); requests already sent still finish."""
        if self._stopping is None:
            self._stopping = reason

    def redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def chat(self, step: str, prompt: str, attempt: int) -> CachedReply:
        """The reply to ``prompt`` (try ``attempt``): from the cache, a request in flight, or a new request."""
        cfg = self.cfg
        messages = [{"role": "user", "content": prompt}]
        sampling = cfg.sampling()
        if "seed" in sampling:
            sampling["seed"] += attempt
        else:
            sampling["try"] = attempt  # no seed sent: the try number still separates the cache entries
        key = request_key(prompt_version=cfg.prompt_version, model=cfg.model, sampling=sampling, step=step,
                          messages=messages)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cached += 1
            return hit
        if key in self._inflight:
            self.stats.shared += 1
            return await asyncio.shield(self._inflight[key])
        future = asyncio.ensure_future(self._send(key, messages, sampling))
        self._inflight[key] = future
        future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _send(self, key: str, messages: list, sampling: dict) -> CachedReply:
        cfg = self.cfg
        if self._stopping is not None:
            raise self._stopping
        if cfg.max_requests is not None and self.stats.paid >= cfg.max_requests:
            raise BudgetExhausted(f"request budget of {cfg.max_requests} paid requests reached")
        self.stats.paid += 1
        body = {"model": cfg.model, "messages": messages,
                **{k: v for k, v in sampling.items() if k != "try"}}
        for retry in range(cfg.retries + 1):
            if retry and self._stopping is not None:  # stopped while this request waited to retry
                raise self._stopping
            retry_after = None
            async with self._sem:
                try:
                    resp = await self._post(body)
                except ResponseTooLarge as exc:
                    log.warning("request %s: %s (the document becomes a reject)", key[:12], exc)
                    raise
                except (_DeadlineExceeded, httpx.TimeoutException):
                    reason = "timeout"
                except httpx.RequestError as exc:  # connection, protocol or body-decoding errors
                    reason = f"connection error ({type(exc).__name__})"
                else:
                    if resp.status_code == 200:
                        reply = self._parse(resp)
                        if reply is not None:
                            self.stats.paid_usage.add(reply)
                            return self.cache.put(key, reply)
                        reason = "malformed response"
                    elif resp.status_code == 429 or resp.status_code >= 500:
                        reason = f"HTTP {resp.status_code}"
                        retry_after = retry_after_seconds(resp.headers.get("retry-after"))
                    elif resp.status_code in FATAL_STATUS:
                        raise JobIncomplete(f"HTTP {resp.status_code} from {cfg.base_url}: check the URL, the model "
                                            f"name and the API key variable ({self.redact(resp.text[:200])!r})")
                    else:
                        log.warning("request %s: HTTP %d, not retried (the document becomes a reject)", key[:12],
                                    resp.status_code)
                        raise RequestRejected(f"HTTP {resp.status_code}: {self.redact(resp.text[:200])}")
            self.stats.retries[reason] += 1
            if self._stopping is not None:
                raise self._stopping
            if retry == cfg.retries:
                raise JobIncomplete(f"request {key[:12]} still failing after {retry + 1} attempts ({reason})")
            delay = backoff_delay(retry, cfg, retry_after, self._rng)
            log.warning("request %s: %s; retry %d/%d in %.2f s", key[:12], reason, retry + 1, cfg.retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _parse(resp: _Reply) -> Optional[CachedReply]:
        """The reply of a 200 answer, or None when its body is not a chat completion (then it is retried)."""
        try:
            data = json.loads(resp.body)
            content = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
            if not isinstance(content, str):
                return None
            return CachedReply(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
