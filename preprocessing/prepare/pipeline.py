"""The two passes of ``prepare``: a shard pass (read, clean, filter, dedup keys) and the merge (dedup, chunk, write).

Why two passes: everything per document is independent and runs sharded (``--shard i/n``, round-robin by global
document ordinal across the sources in their listed order) and on all cores (``workers``, ordered, so the output
does not depend on the worker count); deciding duplicates needs every earlier document, so the merge does it
once, in global order. An unsharded run is the shard pass as ``Shard(0, 1)`` followed by the merge: one code path,
hence ``prepare --shard i/n`` for every i, then ``merge --shards n``, writes the bytes of an unsharded run.

Files in ``--out``: per shard ``shards/{candidates,filter_rejects}.shard-i-of-n.jsonl`` and
``shards/shard_report.shard-i-of-n.json`` (written last: its presence means the shard finished); after the merge
``documents.jsonl``, ``rejects.jsonl`` and ``report.json`` (written through temporary files and renamed, so a
killed job leaves complete files or none, and a rerun writes the same bytes).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
from collections import deque
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from preprocessing.prepare.chunking import chunk
from preprocessing.prepare.config import InputError, PrepareConfig, Source, check_sources
from preprocessing.prepare.dedup import Deduplicator, exact_key, signature
from preprocessing.prepare.filters import FILTER_REASONS, first_failure
from preprocessing.prepare.readers import read_source
from preprocessing.prepare.text import Units, clean, detect_lang
from megatron_huatuo.atomic import AtomicFiles, single_writer
from preprocessing.sharding import (Shard, ShardError, read_records, merge_counts, merge_jsonl, merge_targets,
                                    shard_path, writer_target)

DEDUP_REASONS = ("exact_duplicate", "near_duplicate")
REASONS = FILTER_REASONS + DEDUP_REASONS
CANDIDATES, FILTER_REJECTS, SHARD_REPORT = "candidates.jsonl", "filter_rejects.jsonl", "shard_report.json"
BATCH = 128  # documents per task sent to a worker process
PREVIEW = 200  # characters of the cleaned text kept in a reject record

T = TypeVar("T")
R = TypeVar("R")


# --- per document (runs in the worker processes) -------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(cfg: PrepareConfig, langs: list[str]) -> None:
    _WORKER.update(cfg=cfg, langs=langs)


def process(cfg: PrepareConfig, source_lang: str, text: str) -> dict:
    """Clean, filter and key one document: ``{"lang", "text", "reason", "value"}`` or with ``key``/``minhash``."""
    text = clean(text)
    lang = detect_lang(text) if source_lang == "auto" else source_lang
    us = Units(text)
    failed = first_failure(text, lang, cfg, us)
    if failed:
        return {"lang": lang, "text": text, "reason": failed[0], "value": round(float(failed[1]), 4)}
    return {"lang": lang, "text": text, "key": exact_key(us), "minhash": signature(us, lang, cfg)}


def _process_batch(batch: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, dict]]:
    cfg, langs = _WORKER["cfg"], _WORKER["langs"]
    return [(ordinal, si, doc_id, process(cfg, langs[si], text)) for ordinal, si, doc_id, text in batch]


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, initializer: Callable, initargs: tuple
                ) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` processes, results in input order, at most 4 tasks per worker in flight.

    Why not ``Pool.imap``: it reads its whole input ahead, which for a corpus means the whole corpus in memory.
    """
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer, initargs) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.apply_async(fn, (item,)))
            if len(window) >= 4 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _progress(desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" docs", file=sys.stderr, disable=not enabled or not sys.stderr.isatty(),
                dynamic_ncols=True, smoothing=0.1)


def _line(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


# --- the shard pass --------------------------------------------------------------------------------------------
def _owned_documents(sources: list[Source], shard: Shard, allow_empty: bool = False
                     ) -> Iterator[tuple[int, int, str, str]]:
    """``(global ordinal, source index, id, raw text)`` of this shard's documents, in global order.

    A source without a single record is an error unless ``allow_empty``: an empty file is far more often a failed
    download or a wrong path pattern than an intended input, and it would otherwise vanish from the data silently.
    Every shard reads every record (it only parses its own), so each shard sees the same verdict.
    """
    ordinal = 0
    for si, src in enumerate(sources):
        first = ordinal
        for rec in read_source(src, want=lambda i, first=first: shard.owns(first + i)):
            if rec is not None:
                yield ordinal, si, rec[0], rec[1]
            ordinal += 1
        if ordinal == first and not allow_empty:
            raise InputError(f"source {src.name!r}: {src.path} holds no documents (an empty source is an error; "
                             f"--allow-empty accepts it)")


@single_writer(lambda a: writer_target(a["out_dir"], a["shard"]))
def run_shard(sources: list[Source], out_dir: str | Path, cfg: PrepareConfig, shard: Shard = Shard(),
              workers: int = 1, progress: bool = False, allow_empty: bool = False) -> dict:
    """Read, clean and filter this shard's documents; write its candidates, filter rejects and report.

    Raises InputError for a source without documents unless ``allow_empty``.
    """
    check_sources(sources)
    out = Path(out_dir)
    shard_path(out / SHARD_REPORT, shard).unlink(missing_ok=True)  # unfinished until this run writes it again
    counts = {s.name: {"read": 0, "dropped": {r: 0 for r in FILTER_REASONS}} for s in sources}
    batches = _batched(_owned_documents(sources, shard, allow_empty), BATCH)
    bar = _progress(f"prepare {shard.index}/{shard.count}", progress)
    with bar, AtomicFiles(shard_path(out / CANDIDATES, shard), shard_path(out / FILTER_REJECTS, shard)) as (
            cand_f, rej_f):
        for results in ordered_map(_process_batch, batches, workers, _init_worker, (cfg, [s.lang for s in sources])):
            for ordinal, si, doc_id, r in results:
                name = sources[si].name
                counts[name]["read"] += 1
                if "reason" in r:
                    counts[name]["dropped"][r["reason"]] += 1
                    rej_f.write(_line({"ordinal": ordinal, "source": name, "id": doc_id, "reason": r["reason"],
                                       "value": r["value"], "preview": r["text"][:PREVIEW]}))
                else:
                    cand_f.write(_line({"ordinal": ordinal, "source": name, "id": doc_id, "lang": r["lang"],
                                        "key": r["key"], "minhash": r["minhash"], "text": r["text"]}))
            bar.update(len(results))
    report = {"shard": [shard.index, shard.count], "config": asdict(cfg), "sources": [asdict(s) for s in sources],
              "counts": counts}
    with AtomicFiles(shard_path(out / SHARD_REPORT, shard)) as (f,):
        f.write(json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    return report


# --- the merge -------------------------------------------------------------------------------------------------
def shard_report(out: Path, s: Shard) -> dict:
    """The report of shard ``s`` (its presence means the shard finished)."""
    path = shard_path(out / SHARD_REPORT, s)
    if not path.exists():
        raise ShardError(f"{path} is missing: shard {s.index}/{s.count} has not finished (rerun it with "
                         f"--shard {s.index}/{s.count})")
    rep = json.loads(path.read_text(encoding="utf-8"))
    if rep.get("shard") != [s.index, s.count]:
        raise ShardError(f"{path}: written by shard {rep.get('shard')}, expected {[s.index, s.count]}")
    return rep


def _shard_reports(out: Path, count: int) -> list[dict]:
    reports = []
    for s in Shard(0, count).all():
        rep = shard_report(out, s)
        if reports and (rep["config"], rep["sources"]) != (reports[0]["config"], reports[0]["sources"]):
            raise ShardError(f"{shard_path(out / SHARD_REPORT, s)}: shard {s.index} ran with other settings or "
                             "sources than shard 0; rerun it")
        reports.append(rep)
    return reports


def settings_of(out: Path, count: int) -> tuple[PrepareConfig, dict[str, Source], dict]:
    """The shards' common settings, sources (by name) and summed counts; every shard report must exist and agree."""
    reports = _shard_reports(out, count)
    cfg = PrepareConfig(**reports[0]["config"])
    sources = {d["name"]: Source(**d) for d in reports[0]["sources"]}
    return cfg, sources, merge_counts([r["counts"] for r in reports])


def per_source_table(sources: dict[str, Source], counts: dict) -> dict:
    """The report's ``per_source`` before the dedup: read and filter drops from the shard reports, the rest 0."""
    return {name: {"kind": s.kind, "lang": s.lang, "read": counts[name]["read"],
                   "dropped": {**counts[name]["dropped"], **{r: 0 for r in DEDUP_REASONS}},
                   "kept": 0, "chunks": 0} for name, s in sources.items()}


def kept_lines(rec: dict, cfg: PrepareConfig, kind: str) -> list[str]:
    """The ``documents.jsonl`` lines of a kept candidate record: its chunks."""
    return [_line({"id": rec["id"], "source": rec["source"], "kind": kind, "lang": rec["lang"], "text": piece,
                   "chunk_id": i}) for i, piece in enumerate(chunk(rec["text"], cfg.max_chars))]


def dedup_reject_line(rec: dict, reason: str, of: tuple[str, str]) -> str:
    """The ``rejects.jsonl`` line of a candidate dropped as a duplicate of ``of`` = (source, id)."""
    return _line({"ordinal": rec["ordinal"], "source": rec["source"], "id": rec["id"], "reason": reason,
                  "duplicate_of": {"source": of[0], "id": of[1]}, "preview": rec["text"][:PREVIEW]})


def write_report(out: Path, per_source: dict, cfg: PrepareConfig, count: int) -> dict:
    """``report.json`` from the final per-source table, then the merged intermediates out (``shards/`` stays, so a
    merge can be rerun)."""
    report = {"read": {n: p["read"] for n, p in per_source.items()},
              "dropped": {r: sum(p["dropped"][r] for p in per_source.values()) for r in REASONS},
              "kept_documents": sum(p["kept"] for p in per_source.values()),
              "chunks": sum(p["chunks"] for p in per_source.values()),
              "per_source": per_source, "config": asdict(cfg)}
    with AtomicFiles(out / "report.json") as (f,):
        f.write(json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    for name in (CANDIDATES, FILTER_REJECTS) + ((SHARD_REPORT,) if count == 1 else ()):
        (out / name).unlink(missing_ok=True)
    return report


@single_writer(lambda a: merge_targets(a["out_dir"], a["count"]))
def merge(out_dir: str | Path, count: int = 1, progress: bool = False) -> dict:
    """Join the shard outputs in global order, drop exact and near duplicates, chunk, write the final files.

    One process holds every kept document's dedup state (``Deduplicator``): fine up to a few million documents;
    beyond, the staged dedup (``preprocessing.prepare.staged``) makes the same decisions in bounded memory per task.
    """
    out = Path(out_dir)
    cfg, sources, counts = settings_of(out, count)
    if count > 1:
        for name in (CANDIDATES, FILTER_REJECTS):
            merge_jsonl(out / name, count, key=lambda r: r["ordinal"])
    per_source = per_source_table(sources, counts)
    dedup = Deduplicator(cfg)
    kept: dict[int, tuple[str, str]] = {}  # ordinal -> (source, id) of kept documents
    kept_ids: set[tuple[str, str]] = set()
    filtered = iter(read_records(out / FILTER_REJECTS))
    pending = next(filtered, None)
    with _progress("merge", progress) as bar, AtomicFiles(out / "documents.jsonl", out / "rejects.jsonl") as (
            docs_f, rej_f):
        for rec in read_records(out / CANDIDATES):
            ordinal, name, doc_id = rec["ordinal"], rec["source"], rec["id"]
            while pending is not None and pending["ordinal"] < ordinal:
                rej_f.write(_line(pending))
                pending = next(filtered, None)
            verdict = dedup.check(ordinal, rec["key"], rec["minhash"])
            if verdict:
                reason, first = verdict
                per_source[name]["dropped"][reason] += 1
                rej_f.write(dedup_reject_line(rec, reason, kept[first]))
            else:
                if (name, doc_id) in kept_ids:
                    raise duplicate_id_error(sources[name], doc_id)
                kept_ids.add((name, doc_id))
                kept[ordinal] = (name, doc_id)
                pieces = kept_lines(rec, cfg, sources[name].kind)
                docs_f.writelines(pieces)
                per_source[name]["kept"] += 1
                per_source[name]["chunks"] += len(pieces)
            bar.update(1)
        while pending is not None:
            rej_f.write(_line(pending))
            pending = next(filtered, None)
    return write_report(out, per_source, cfg, count)


def duplicate_id_error(src: Source, doc_id: str) -> InputError:
    return InputError(f"source {src.name!r} ({src.path}): duplicate document id {doc_id!r}")


@single_writer(lambda a: writer_target(a["out_dir"], a["shard"] or Shard()))
def run(sources_file: str | Path, out_dir: str | Path, cfg: PrepareConfig, shard: Optional[Shard] = None,
        workers: int = 1, progress: bool = False, allow_empty: bool = False, dedup_partitions: int = 0
        ) -> dict:
    """``prepare`` as the CLI runs it: the shard pass, then (unsharded) the merge; returns the report written.

    ``dedup_partitions`` P > 0 uses the staged dedup instead of the merge (same bytes): unsharded, all its stages
    run here in sequence; sharded, this shard's ``signatures`` stage runs after its shard pass.
    """
    from preprocessing.prepare import staged
    from preprocessing.prepare.config import load_sources

    shard = shard or Shard()
    report = run_shard(load_sources(sources_file), out_dir, cfg, shard, workers, progress, allow_empty)
    if dedup_partitions:
        if shard.whole:
            return staged.run_all(out_dir, 1, dedup_partitions)
        staged.signatures(out_dir, shard, dedup_partitions)
        return report
    return merge(out_dir, 1, progress) if shard.whole else report
