"""The rewrite job: ``documents.jsonl`` -> ``pairs.jsonl`` + ``rejects.jsonl`` + ``summary.json``, and the merge of
shard outputs.

Why the output is exactly reproducible after a SIGKILL: every answered request is in the disk cache before its
document is committed (write-ahead), and the outputs are written only by an ordered commit of finished documents
into ``.partial`` files that are renamed into place at the very end. A killed run leaves no output; its rerun
replays the cached replies (paying only for the requests that were in flight) and commits the same records in the
same input order. Memory stays bounded: at most ``window`` documents are in flight, the input is streamed.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

from preprocessing.rewrite.cache import Cache
from preprocessing.rewrite.checks import check_output
from preprocessing.rewrite.client import ChatClient, RequestRejected, Usage
from preprocessing.rewrite.config import (BudgetExhausted, JobIncomplete, RewriteConfig, RewriteError,
                                          TooManyFailures, api_key_from_env)
from preprocessing.rewrite.prompts import PromptSet, load_prompts, render
from megatron_huatuo.atomic import AtomicFiles, single_writer
from preprocessing.sharding import (Shard, ShardError, merge_counts, merge_jsonl, merge_targets, shard_path,
                                    writer_target)

log = logging.getLogger("preprocessing.rewrite")

REQUIRED_FIELDS = ("id", "text", "kind", "lang", "source")
OUTPUT_CHARS_IN_REJECTS = 300


@dataclass(frozen=True)
class Outputs:
    """Where one run (a shard or the whole input) writes."""

    pairs: Path
    rejects: Path
    summary: Path

    @classmethod
    def of(cls, out_dir: str | Path, shard: Shard = Shard()) -> "Outputs":
        out = Path(out_dir)
        return cls(shard_path(out / "pairs.jsonl", shard), shard_path(out / "rejects.jsonl", shard),
                   shard_path(out / "summary.json", shard))


# -- input -------------------------------------------------------------------------------------------------------
def iter_documents(path: Path) -> Iterator[Tuple[int, int, dict]]:
    """(ordinal, line number, row) of every non-blank line; the ordinal (0-based) is what ``--shard`` splits on."""
    ordinal = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RewriteError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            yield ordinal, lineno, row
            ordinal += 1


def target_language(cfg: RewriteConfig, doc: dict) -> str:
    return doc["lang"] if cfg.target_lang == "source" else cfg.target_lang


def validate_documents(path: Path, cfg: RewriteConfig, prompts: PromptSet) -> int:
    """A first streaming pass: every row well-formed before any request is paid. Returns the row count."""
    if not path.exists():
        raise RewriteError(f"{path}: no such file")
    n = 0
    for _, lineno, row in iter_documents(path):
        if not isinstance(row, dict):
            raise RewriteError(f"{path}:{lineno}: expected a JSON object")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise RewriteError(f"{path}:{lineno}: missing field(s) {missing}")
        if not isinstance(row["text"], str):
            raise RewriteError(f"{path}:{lineno}: field 'text' must be a string")
        lang = target_language(cfg, row)
        if lang not in prompts.languages:
            raise RewriteError(f"{path}:{lineno}: no {prompts.version} prompts for target language {lang!r} "
                               f"(have {', '.join(prompts.languages)}; see --target-lang)")
        n += 1
    if n == 0 and not cfg.allow_empty:
        raise RewriteError(f"{path}: no documents (an empty input is an error; --allow-empty accepts it)")
    return n


# -- one document ------------------------------------------------------------------------------------------------
async def _step(client: ChatClient, cfg: RewriteConfig, step: str, prompt: str, lang: str,
                usage: Usage) -> Tuple[Optional[str], list, str]:
    """Up to ``cfg.tries`` tries of one step: (accepted output or None, reasons of rejected tries, last output)."""
    reasons, output = [], ""
    for attempt in range(cfg.tries):
        reply = await client.chat(step, prompt, attempt)
        usage.add(reply)
        output = reply.content.strip()
        reason = check_output(step, output, lang, max_question_chars=cfg.max_question_chars,
                              min_script_ratio=cfg.min_script_ratio)
        if reason is None:
            return output, reasons, output
        reasons.append(reason)
    return None, reasons, output


async def rewrite_document(client: ChatClient, prompts: PromptSet, cfg: RewriteConfig, ordinal: int, doc: dict,
                           usage: Usage) -> Tuple[str, dict]:
    """("pair", pair) or ("reject", reject) for one document, as the original: a question, then its answer."""
    lang, text = target_language(cfg, doc), doc["text"]
    where = {"ordinal": ordinal, "doc_id": doc["id"], "chunk_id": doc.get("chunk_id", 0), "source": doc["source"],
             "lang": lang}
    step = "question"
    try:
        question, reasons, last = await _step(
            client, cfg, step, render(prompts.template(step, lang), text=text[:cfg.question_chars]), lang, usage)
        if question is None:
            return "reject", {**where, "step": step, "reason": reasons[-1], "tries": reasons,
                              "output": last[:OUTPUT_CHARS_IN_REJECTS]}
        step = "answer"
        answer, reasons, last = await _step(
            client, cfg, step,
            render(prompts.template(step, lang), text=text[:cfg.answer_chars], question=question), lang, usage)
        if answer is None:
            return "reject", {**where, "step": step, "reason": reasons[-1], "tries": reasons,
                              "output": last[:OUTPUT_CHARS_IN_REJECTS], "question": question}
    except RequestRejected as exc:
        return "reject", {**where, "step": step, "reason": exc.reason, "tries": [],
                          "output": client.redact(str(exc))[:OUTPUT_CHARS_IN_REJECTS]}
    return "pair", {"question": question, "answer": answer, "kind": doc["kind"], "lang": lang, "doc_id": doc["id"],
                    "chunk_id": doc.get("chunk_id", 0), "source": doc["source"], "model": cfg.model,
                    "prompt_version": prompts.version, "ordinal": ordinal}


# -- the ordered commit --------------------------------------------------------------------------------------------
def _dump(record: dict) -> str:
    # merge_jsonl serialises the same way, so a merged shard file is byte-identical to an unsharded run's.
    return json.dumps(record, ensure_ascii=False) + "\n"


def _write_json(path: Path, obj: dict) -> None:
    with AtomicFiles(path) as (f,):
        f.write(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n")


class OrderedWriter:
    """Appends committed records to ``.partial`` files; ``commit`` renames them into place, ``abort`` drops them."""

    def __init__(self, outputs: Outputs):
        self.outputs = outputs
        self._atomic = AtomicFiles(outputs.pairs, outputs.rejects)
        self.files = dict(zip(("pair", "reject"), self._atomic.files))
        self.counts = Counter()
        self.reject_reasons = Counter()

    def write(self, kind: str, record: dict) -> None:
        self.files[kind].write(_dump(record))
        self.counts[kind] += 1
        if kind == "reject":
            self.reject_reasons[f"{record['step']}:{record['reason']}"] += 1

    def commit(self) -> None:
        self._atomic.commit()

    def abort(self) -> None:
        self._atomic.abort()


# -- the summary -------------------------------------------------------------------------------------------------
def _cost(prompt_tokens: int, completion_tokens: int, settings: dict) -> Optional[float]:
    p, c = settings.get("price_per_1k_prompt"), settings.get("price_per_1k_completion")
    if p is None and c is None:
        return None
    return round(prompt_tokens / 1000 * (p or 0.0) + completion_tokens / 1000 * (c or 0.0), 6)


def finish_summary(settings: dict, counts: dict) -> dict:
    """The summary JSON: settings (must agree across shards), additive counts, and the cost derived from them.

    ``tokens`` sums the ``usage`` of every reply the outputs are made of (cached or not: what the data cost);
    ``sent``/``sent_tokens`` are what this run itself requested (what this run cost).
    """
    tok, sent = counts["tokens"], counts["sent_tokens"]
    return {"settings": settings, "counts": counts,
            "cost_estimate": {"all_replies": _cost(tok["prompt"], tok["completion"], settings),
                              "this_run": _cost(sent["prompt"], sent["completion"], settings)}}


def _settings(cfg: RewriteConfig, prompts: PromptSet) -> dict:
    return {"model": cfg.model, "prompt_version": prompts.version, "target_lang": cfg.target_lang,
            "sampling": cfg.sampling(), "tries": cfg.tries, "question_chars": cfg.question_chars,
            "answer_chars": cfg.answer_chars, "max_question_chars": cfg.max_question_chars,
            "price_per_1k_prompt": cfg.price_per_1k_prompt, "price_per_1k_completion": cfg.price_per_1k_completion}


# -- the job -----------------------------------------------------------------------------------------------------
async def _run(docs_path: Path, outputs: Outputs, cfg: RewriteConfig, prompts: PromptSet, cache: Cache,
               shard: Shard, api_key: Optional[str]) -> dict:
    usage = Usage()
    window = max(4 * cfg.concurrency, 32)  # documents in flight; the head may be slow while later ones finish
    async with ChatClient(cfg, cache, api_key) as client:
        writer = OrderedWriter(outputs)
        pending: deque = deque()
        error: Optional[BaseException] = None

        async def drain(limit: int) -> None:
            nonlocal error
            while len(pending) > limit:
                task = pending.popleft()
                try:
                    kind, record = await task
                except (BudgetExhausted, JobIncomplete) as exc:
                    if error is None:
                        error = exc
                        client.stop(exc)
                    continue
                if error is None:
                    writer.write(kind, record)
                    done = writer.counts["pair"] + writer.counts["reject"]
                    if done % 1000 == 0:
                        log.info("%d documents done (%d pairs), %d requests sent", done, writer.counts["pair"],
                                 client.stats.paid)

        try:
            documents = 0
            for ordinal, _, doc in iter_documents(docs_path):
                if error is not None:
                    break
                if not shard.owns(ordinal):
                    continue
                documents += 1
                pending.append(asyncio.ensure_future(rewrite_document(client, prompts, cfg, ordinal, doc, usage)))
                await drain(window - 1)
            await drain(0)
        except BaseException:
            for task in pending:
                task.cancel()
            writer.abort()
            raise
        stats = client.stats
        if error is not None:
            writer.abort()
            raise type(error)(f"{error}; {stats.paid} requests sent by this run, every answered one is cached in "
                              f"{cache.root}: rerun the same command to continue")
        writer.commit()
    counts = {"documents": documents, "pairs": writer.counts["pair"], "rejects": dict(sorted(writer.reject_reasons.items())),
              "requests": {"used": stats.cached + stats.shared + stats.paid, "sent": stats.paid, "cached": stats.cached,
                           "shared_in_flight": stats.shared, "retries": dict(sorted(stats.retries.items()))},
              "tokens": {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens},
              "sent_tokens": {"prompt": stats.paid_usage.prompt_tokens,
                              "completion": stats.paid_usage.completion_tokens}}
    summary = finish_summary(_settings(cfg, prompts), counts)
    _write_json(outputs.summary, summary)
    check_failure_rate(summary, cfg.max_failure_rate)
    return summary


def check_failure_rate(summary: dict, max_failure_rate: Optional[float]) -> None:
    """Raise :class:`TooManyFailures` when more than ``max_failure_rate`` of the documents got no pair (``None``:
    when all of them failed), with the counts and the most frequent reasons in one line.

    Why: a run whose every request was refused (a wrong model name answered with HTTP 400, a prompt the server
    rejects) or whose every output was rejected used to exit 0 with an empty ``pairs.jsonl``.
    """
    counts = summary["counts"]
    documents, pairs = counts["documents"], counts["pairs"]
    failed = documents - pairs
    if not documents or (failed < documents if max_failure_rate is None else failed / documents <= max_failure_rate):
        return
    top = sorted(counts["rejects"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    limit = "every document failed" if max_failure_rate is None else f"over --max-failure-rate {max_failure_rate}"
    raise TooManyFailures(f"{failed} of {documents} documents got no pair ({limit}); most frequent reasons: "
                          f"{', '.join(f'{reason} x{n}' for reason, n in top)}; see rejects.jsonl", summary)


@single_writer(lambda a: writer_target(a["out_dir"], a["shard"]))
def rewrite_file(docs_path: str | Path, out_dir: str | Path, cfg: RewriteConfig, cache_dir: str | Path | None = None,
                 shard: Shard = Shard()) -> dict:
    """Rewrite the documents ``shard`` owns; returns the summary (also written to ``summary.json``).

    The API key is read from the environment only (``HUATUO_REWRITE_API_KEY``, else ``OPENAI_API_KEY``). Raises
    :class:`RewriteError` for bad input (nothing sent), :class:`BudgetExhausted` / :class:`JobIncomplete` when the
    run stopped early (no output written; rerun to continue from the cache), :class:`TooManyFailures` when too many
    documents got no pair (outputs written).
    """
    cfg.validate()
    docs_path = Path(docs_path)
    prompts = load_prompts(cfg.prompt_version)
    validate_documents(docs_path, cfg, prompts)
    cache = Cache(cache_dir if cache_dir is not None else Path(out_dir) / "cache")
    return asyncio.run(_run(docs_path, Outputs.of(out_dir, shard), cfg, prompts, cache, shard, api_key_from_env()))


@single_writer(lambda a: merge_targets(a["out_dir"], a["count"]))
def merge_shards(out_dir: str | Path, count: int) -> dict:
    """Merge ``count`` shard outputs of ``out_dir`` into its ``pairs.jsonl``, ``rejects.jsonl``, ``summary.json``."""
    out = Path(out_dir)
    summaries = []
    for shard in Shard(0, count).all():
        path = Outputs.of(out, shard).summary
        if not path.exists():
            raise ShardError(f"cannot merge: {path} is missing (shard {shard.index}/{count} has not finished)")
        summaries.append(json.loads(path.read_text(encoding="utf-8")))
    settings = summaries[0]["settings"]
    for shard, s in zip(Shard(0, count).all(), summaries):
        if s["settings"] != settings:
            raise ShardError(f"shard {shard.index}/{count} ran with other settings: {s['settings']} vs {settings}")
    by_ordinal = lambda r: r["ordinal"]  # noqa: E731
    merge_jsonl(out / "pairs.jsonl", count, key=by_ordinal)
    merge_jsonl(out / "rejects.jsonl", count, key=by_ordinal)
    summary = finish_summary(settings, merge_counts([s["counts"] for s in summaries]))
    _write_json(out / "summary.json", summary)
    return summary
