"""``rewrite``: documents -> (question, answer) pairs through any OpenAI-compatible chat-completions server.

As the original HuatuoGPT-II: two calls per document, a question asked from ``text[:400]`` (kept only when at most
180 characters), then its answer with ``text[:600]`` as a hidden reference (dropped when it mentions the reference,
e.g. "参考"), each step tried twice. Ours adds: versioned prompt files (``preprocessing/prompts/``), more output
checks (empty, refusal, wrong language), every reject kept with its reason, async requests with bounded
concurrency, retries with backoff and jitter, a write-ahead cache that makes a killed run resumable with identical
output, a request budget, token/cost accounting and ``--shard i/n``. See docs/preprocessing.md.

Modules: ``config`` (settings, errors), ``prompts`` (templates), ``checks`` (output checks), ``cache`` (request
cache), ``client`` (HTTP), ``job`` (the ordered job and the shard merge).
"""
from preprocessing.rewrite.cache import Cache, request_key
from preprocessing.rewrite.config import (API_KEY_ENVS, BudgetExhausted, JobIncomplete, RewriteConfig, RewriteError,
                                          TooManyFailures, api_key_from_env)
from preprocessing.rewrite.job import Outputs, merge_shards, rewrite_file
from preprocessing.rewrite.prompts import load_prompts

__all__ = ["API_KEY_ENVS", "BudgetExhausted", "Cache", "JobIncomplete", "Outputs", "RewriteConfig", "RewriteError",
           "TooManyFailures", "api_key_from_env", "load_prompts", "merge_shards", "request_key", "rewrite_file"]
