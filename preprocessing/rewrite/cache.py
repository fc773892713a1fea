"""The write-ahead request cache: one small JSON file per answered request.

Why per-file: a SIGKILL can only lose the request in flight (a reply is renamed into place whole, never half
written), shards running at once can share one directory, and nothing must be loaded into memory to resume.
Why first writer wins: with sampling, two identical requests (the same text twice, or two shards) can get different
replies; whichever reached the cache first is the reply every run uses, so a rerun reproduces the output exactly.
The key never contains the API key; the entry holds the reply and its ``usage`` only.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def request_key(*, prompt_version: str, model: str, sampling: dict, step: str, messages: list) -> str:
    """SHA-256 over prompt version, model, sampling parameters (with the per-try seed), step and the messages' hash.

    The messages embed the document text, so the key is a function of (prompt version, model, sampling, text).
    """
    text_hash = hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    blob = json.dumps({"prompt_version": prompt_version, "model": model, "sampling": sampling, "step": step,
                       "messages_sha256": text_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    content: str
    prompt_tokens: int
    completion_tokens: int


class Cache:
    """``<root>/<key[:2]>/<key>.json`` = ``{"content", "usage": {"prompt_tokens", "completion_tokens"}}``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[CachedReply]:
        try:
            raw = self.path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(raw)
            usage = entry.get("usage") or {}
            return CachedReply(entry["content"], int(usage.get("prompt_tokens", 0)),
                               int(usage.get("completion_tokens", 0)))
        except (ValueError, KeyError, TypeError, AttributeError):
            # Cannot happen through put() (whole files are renamed into place); a hand-damaged entry is re-requested.
            return None

    def put(self, key: str, reply: CachedReply) -> CachedReply:
        """Store ``reply`` unless the key is already there; returns the reply the cache holds now."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{id(reply)}.tmp")
        entry = {"content": reply.content,
                 "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}}
        tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        try:
            os.link(tmp, path)  # atomic create-if-absent: the first writer wins
        except FileExistsError:
            existing = self.get(key)
            if existing is not None:
                return existing
            os.replace(tmp, path)  # the existing entry was damaged: replace it
            return reply
        except OSError:  # a file system without hard links: plain atomic rename (last writer wins)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return reply
