"""``build``: pairs + SFT dialogues -> a one-stage dataset directory (see ``megatron_huatuo.data.one_stage_format``).

Rows are grouped into sources by kind (pairs rows' ``kind``; every SFT row is kind ``sft``), kept in input
order, formatted with the chat template and written as megatron-core indexed datasets (tokens + loss mask).
``workers`` processes tokenise line-aligned byte ranges of the inputs into shards that are merged in input order
(:mod:`preprocessing.dataset.shards`), so the files are identical for any worker count. ``--shard i/n`` encodes only every n-th range (planned the same
way by every shard) into ``<out>.shards/``; ``merge_shards`` then assembles exactly what one process writes.
The priority order and
packing plan for the manifest's seed and ``seq_length`` are saved too (``order_index/``), so training maps them
instead of recomputing them. Output is written into a temporary sibling directory and renamed into place: a killed
run leaves no partial dataset and a rerun produces byte-identical files.
"""
from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from megatron_huatuo.atomic import atomic_directory, single_writer
from megatron_huatuo.data import compatibility
from megatron_huatuo.data.one_stage_format import FORMAT_VERSION, MANIFEST, MASK_SUFFIX
from megatron_huatuo.data.priority import PrioritySettings
from megatron_huatuo.data.templates import Template, Tokenizer, encode_conversations, get_template
from preprocessing.dataset.formats import FormatError, parse_line
from preprocessing.dataset.shards import (Range, ShardWriter, StreamShard, TempDir, iter_lines, line_number,
                                          merge_stream, optimal_dtype, plan_ranges, refuse_empty_inputs, run_ordered)
from preprocessing.sharding import Shard, ShardError


@dataclass
class BuildConfig:
    pairs: List[str]
    sft: List[str]
    tokenizer: str
    seq_length: int
    seed: int
    out: str
    template: str = "huatuo"
    priority: PrioritySettings = field(default_factory=PrioritySettings)
    workers: int = 1
    allow_empty: bool = False  # an empty input file is skipped instead of refused


class _Worker:
    tokenizer: Optional[Tokenizer] = None
    template: Optional[Template] = None
    roles: Dict[str, str] = {}
    scratch: str = ""


def _init(cfg: BuildConfig, scratch: str) -> None:
    _Worker.tokenizer = Tokenizer(cfg.tokenizer)
    _Worker.template = get_template(cfg.template)
    _Worker.roles = {**{str(p): "pairs" for p in cfg.pairs}, **{str(p): "sft" for p in cfg.sft}}
    _Worker.scratch = scratch


def _dtype_of(stream: str) -> type:
    return np.uint8 if stream.endswith(MASK_SUFFIX) else optimal_dtype(_Worker.tokenizer.vocab_size)


def _encode_range(r: Range, batch_rows: int = 256) -> dict:
    tok, template, role = _Worker.tokenizer, _Worker.template, _Worker.roles[r.path]
    writer = ShardWriter(_Worker.scratch, r.ordinal, _dtype_of)
    trained: Dict[str, int] = defaultdict(int)
    rows = 0
    kinds: List[str] = []
    convs: List[list] = []

    def flush() -> None:
        by_kind: Dict[str, list] = defaultdict(list)  # documents of each kind, in input order
        for kind, doc in zip(kinds, encode_conversations(convs, tok, template)):
            by_kind[kind].append(doc)
        for kind, docs in by_kind.items():
            lengths = np.fromiter((len(ids) for ids, _ in docs), dtype=np.int32, count=len(docs))
            total = int(lengths.sum())
            ids = np.fromiter(itertools.chain.from_iterable(d[0] for d in docs), dtype=np.int64, count=total)
            mask = np.fromiter(itertools.chain.from_iterable(d[1] for d in docs), dtype=np.uint8, count=total)
            ones = np.ones(len(docs), dtype=np.int64)  # one sequence per document
            writer.add_documents(kind, ids, lengths, ones)
            writer.add_documents(kind + MASK_SUFFIX, mask, lengths, ones)
            trained[kind] += int(mask.sum())
        kinds.clear()
        convs.clear()

    for offset, line in iter_lines(r):
        if not line.strip():
            continue
        try:
            row, turns = parse_line(line)
            kind = "sft" if role == "sft" else row.get("kind") if isinstance(row, dict) else None
            if not isinstance(kind, str) or not kind:
                raise ValueError("pairs rows need a non-empty 'kind'")
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{r.path}:{line_number(r.path, offset)}: {exc}") from None
        kinds.append(kind)
        convs.append(turns)
        rows += 1
        if len(convs) >= batch_rows:
            flush()
    flush()
    return {"path": r.path, "rows": rows, "trained": dict(trained), "streams": writer.close()}


def _inputs(cfg: BuildConfig) -> list[tuple[str, str]]:
    """(path, role) of every input, checked: present, none given twice, none empty (unless ``allow_empty``)."""
    if cfg.seq_length < 2:
        raise ValueError(f"--seq-length must be >= 2, got {cfg.seq_length}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {cfg.workers}")
    get_template(cfg.template)
    inputs = [(str(p), "pairs") for p in cfg.pairs] + [(str(p), "sft") for p in cfg.sft]
    for path, _ in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"input {path}: no such file")
    if len({p for p, _ in inputs}) != len(inputs):
        raise ValueError("an input file is given twice")
    refuse_empty_inputs([p for p, _ in inputs], cfg.allow_empty)
    return inputs


def _build_target(args: dict) -> Path:
    """What a build locks: ``out``, or its shard's part ``<out>.shards/<shard>`` (shards run side by side)."""
    shard = args["shard"]
    return Path(args["cfg"].out) if shard is None or shard.whole else shards_dir(args["cfg"].out) / shard.name


@single_writer(_build_target)  # before reading anything: a second build into the same output stops at once
def build(cfg: BuildConfig, shard: Optional[Shard] = None) -> dict:
    """Write the directory; returns the manifest. With a ``shard`` of n > 1, encode only that shard's ranges into
    ``<out>.shards/`` (``merge_shards`` writes the directory once every shard has)."""
    if shard is not None and not shard.whole:
        return build_shard(cfg, shard)
    inputs = _inputs(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out, replace=True) as tmp:  # the whole directory or none, also on errors
        with TempDir.beside(out) as scratch:
            ranges = plan_ranges([p for p, _ in inputs], cfg.workers)
            _init(cfg, str(scratch))  # before the pool forks: workers inherit the loaded tokenizer
            results = run_ordered(_encode_range, ranges, cfg.workers)
            manifest = _assemble(cfg, inputs, results, _Worker.tokenizer, tmp)
    return manifest


def _assemble(cfg: BuildConfig, inputs: list[tuple[str, str]], results: list[dict], tok: Tokenizer,
              tmp: Path) -> dict:
    """The dataset directory ``tmp`` from every range's encoded parts (in range order): merged streams, manifest
    (with the compatibility record the trainer checks the model against) and the saved order index."""
    template = get_template(cfg.template)
    kinds = sorted({s for res in results for s in res["streams"] if not s.endswith(MASK_SUFFIX)})
    if not kinds:
        raise ValueError("no rows in any input file")
    sources, lengths = [], []
    for kind in kinds:  # sorted: independent of input-file order of kinds
        tok_parts = [res["streams"][kind] for res in results if kind in res["streams"]]
        mask_parts = [res["streams"][kind + MASK_SUFFIX] for res in results if kind in res["streams"]]
        docs, tokens = merge_stream(tok_parts, tmp / kind, optimal_dtype(tok.vocab_size))
        merge_stream(mask_parts, tmp / f"{kind}{MASK_SUFFIX}", np.uint8)
        lengths.extend(p.sequence_lengths for p in tok_parts)
        sources.append({"name": kind, "kind": kind, "prefix": kind, "documents": docs, "tokens": tokens,
                        "max_token_id": max(p.max_id for p in tok_parts),
                        "trained_tokens": sum(res["trained"].get(kind, 0) for res in results),
                        "priority": cfg.priority.priority(kind), "epochs": cfg.priority.epoch_count(kind)})
    rows_per_file: Dict[str, int] = defaultdict(int)
    for res in results:
        rows_per_file[res["path"]] += res["rows"]
    fits = compatibility.record(cfg.tokenizer, tok.vocab_size, tok.eos_id, max(s["max_token_id"] for s in sources),
                         template.name, cfg.seq_length)  # what the trainer checks the model against
    manifest = {"format_version": FORMAT_VERSION, **fits, "seed": cfg.seed,
                "inputs": [{"path": p, "role": role, "rows": rows_per_file[p]} for p, role in inputs],
                "sources": sources,
                "priority": {"method": "weighted permutation without replacement (exponential keys)",
                             "priorities": cfg.priority.priorities, "epochs": cfg.priority.epochs}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                                encoding="utf-8")
    from megatron_huatuo.data import order_index

    all_lengths = np.concatenate(lengths).astype(np.int64)
    key = order_index.index_key(tmp, sources, cfg.seq_length, cfg.seed)
    order_index.save(tmp, order_index.compute(sources, all_lengths, cfg.seq_length, cfg.seed, key))
    return manifest


# --- shards: `build --shard i/n` then `build-merge --out DIR --shards n` ------------------------------------------
SHARD_META = "shard.json"


def shards_dir(out: str | Path) -> Path:
    """``<out>.shards``: beside the output, which the merge replaces as a whole."""
    out = Path(out)
    return out.parent / f"{out.name}.shards"


def _settings(cfg: BuildConfig) -> dict:
    """What must agree between the shards (``workers`` does not change the output)."""
    return {k: v for k, v in asdict(cfg).items() if k != "workers"}


def build_shard(cfg: BuildConfig, shard: Shard) -> dict:
    """Encode ranges ``shard.index, shard.index + n, ...`` of the plan for n shards into
    ``<out>.shards/<shard name>/`` (atomically: the directory appears complete or not at all)."""
    inputs = _inputs(cfg)
    ranges = plan_ranges([p for p, _ in inputs], shard.count)
    with atomic_directory(shards_dir(cfg.out) / shard.name, replace=True) as tmp:
        _init(cfg, str(tmp))
        results = run_ordered(_encode_range, [r for r in ranges if shard.owns(r.ordinal)], cfg.workers)
        saved = []
        for r, res in zip([r for r in ranges if shard.owns(r.ordinal)], results):
            streams = {}
            for name, part in res["streams"].items():
                np.save(tmp / f"{name}.{r.ordinal:06d}.lengths.npy", part.sequence_lengths)
                np.save(tmp / f"{name}.{r.ordinal:06d}.docs.npy", part.doc_sequences)
                streams[name] = Path(part.bin_path).name
            saved.append({"range": r.ordinal, "path": res["path"], "rows": res["rows"], "trained": res["trained"],
                          "streams": streams,
                          "max_ids": {name: int(part.max_id) for name, part in res["streams"].items()}})
        meta = {"shard": [shard.index, shard.count], "ranges": len(ranges), "settings": _settings(cfg),
                "results": saved}
        (tmp / SHARD_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return meta


@single_writer(lambda a: [a["out"]] + [shards_dir(a["out"]) / s.name for s in Shard(0, a["count"]).all()])
def merge_shards(out: str | Path, count: int, workers: int = 1) -> dict:
    """The dataset directory ``out`` from the n shards' parts: byte-identical to an unsharded ``build``."""
    root = shards_dir(out)
    metas = []
    for s in Shard(0, count).all():
        path = root / s.name / SHARD_META
        if not path.exists():
            raise ShardError(f"{path} is missing: shard {s.index}/{s.count} has not finished (rerun it with "
                             f"--shard {s.index}/{s.count})")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta["shard"] != [s.index, s.count]:
            raise ShardError(f"{path}: written by shard {meta['shard']}, expected {[s.index, s.count]}")
        if metas and (meta["settings"], meta["ranges"]) != (metas[0]["settings"], metas[0]["ranges"]):
            raise ShardError(f"{path}: shard {s.index} ran with other settings or inputs than shard 0; rerun it")
        metas.append(meta)
    settings = metas[0]["settings"]
    cfg = BuildConfig(**{**settings, "priority": PrioritySettings(**settings["priority"]), "workers": workers})
    inputs = _inputs(cfg)
    results = []
    for s, meta in zip(Shard(0, count).all(), metas):
        for res in meta["results"]:
            streams = {name: StreamShard(str(root / s.name / bin_name),
                                         np.load(root / s.name / f"{name}.{res['range']:06d}.lengths.npy"),
                                         np.load(root / s.name / f"{name}.{res['range']:06d}.docs.npy"),
                                         res["max_ids"][name])
                       for name, bin_name in res["streams"].items()}
            results.append({**res, "streams": streams})
    results.sort(key=lambda r: r["range"])
    if [r["range"] for r in results] != list(range(metas[0]["ranges"])):
        raise ShardError(f"{root}: the shards do not cover the {metas[0]['ranges']} planned ranges; rerun them")
    out = Path(out)
    with atomic_directory(out, replace=True) as tmp:
        manifest = _assemble(cfg, inputs, results, Tokenizer(cfg.tokenizer), tmp)
    return manifest
