"""The rewrite job's settings and its error types (one home, imported by every other rewrite module)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

# Read in this order; the key lives only in the environment (never in a config, a log line, the cache or an output).
API_KEY_ENVS = ("HUATUO_REWRITE_API_KEY", "OPENAI_API_KEY")


class RewriteError(RuntimeError):
    """Bad input or settings: the message names the file/line/field. Exit 2."""


class BudgetExhausted(RewriteError):
    """``max_requests`` paid requests were sent: answered ones are cached, a rerun continues. Exit 3."""


class JobIncomplete(RewriteError):
    """Requests still failing after every retry, or a fatal HTTP answer (401/403/404). Exit 4; a rerun continues."""


class TooManyFailures(RewriteError):
    """The share of documents without a pair passed ``max_failure_rate`` (by default: every document failed).

    The outputs are written (``rejects.jsonl`` says why each failed) and ``summary`` is the job summary. Exit 5.
    """

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


@dataclass
class RewriteConfig:
    """Everything that shapes the requests (and so the cache key) plus how hard to push the server.

    Sampling fields (``temperature``, ``top_p``, ``max_tokens``, ``seed``) and ``model``/``prompt_version`` are part
    of every cache key; ``concurrency``, ``retries``, ``timeout`` etc. are not (they never change a reply).
    """

    base_url: str
    model: str = "gpt-3.5-turbo"
    prompt_version: str = "rewrite_v1"
    target_lang: str = "source"  # "source": the document's own language; or a language with prompt files (zh, en)
    # sampling
    temperature: float = 0.7
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    seed: Optional[int] = 0  # sent as seed + try number, so the 2nd try is a distinct, reproducible request
    # the original recipe
    tries: int = 2  # content-level tries per step when the output is rejected (the original: 2)
    question_chars: int = 400  # the question prompt sees text[:400]
    answer_chars: int = 600  # the answer prompt sees text[:600] as hidden reference
    max_question_chars: int = 180
    min_script_ratio: float = 0.5  # share of the target script among the letters of an output
    # transport
    concurrency: int = 16
    retries: int = 6  # HTTP-level retries per request (429, 5xx, timeouts, connection errors, malformed JSON)
    backoff: float = 1.0  # seconds before the 1st retry, doubled each retry, with jitter
    max_backoff: float = 60.0
    timeout: float = 120.0  # seconds per attempt in total: connect, send, and the whole reply
    max_response_bytes: int = 2 << 20  # a longer reply is abandoned (a reject, never cached); normal: a few KB
    max_requests: Optional[int] = None  # budget of paid (uncached) requests for one run
    # the job fails (exit 5, outputs written) when more than this share of its documents got no pair;
    # None: only when every document failed
    max_failure_rate: Optional[float] = None
    allow_empty: bool = False  # an input without documents is an error unless set
    # cost estimate (any currency unit), per 1000 tokens
    price_per_1k_prompt: Optional[float] = None
    price_per_1k_completion: Optional[float] = None

    def sampling(self) -> dict:
        """The request fields that change a reply besides model and messages (without the per-try seed)."""
        out = {"temperature": self.temperature}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def validate(self) -> None:
        for name in ("concurrency", "tries"):
            if getattr(self, name) < 1:
                raise RewriteError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise RewriteError("retries and backoff must be >= 0 and timeout > 0")
        if self.max_requests is not None and self.max_requests < 0:
            raise RewriteError(f"max_requests must be >= 0, got {self.max_requests}")
        if self.max_response_bytes < 1:
            raise RewriteError(f"max_response_bytes must be >= 1, got {self.max_response_bytes}")
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate <= 1:
            raise RewriteError(f"max_failure_rate must be between 0 and 1, got {self.max_failure_rate}")


def api_key_from_env() -> Optional[str]:
    """The API key from the environment (``HUATUO_REWRITE_API_KEY``, else ``OPENAI_API_KEY``), or None."""
    for name in API_KEY_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None
