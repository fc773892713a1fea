"""The global dedup as stages with bounded memory per task: the decisions of ``pipeline.merge``, scaled out.

Why: ``merge`` decides "is this a duplicate of something kept before it?" in one process that holds every kept
document's MinHash, LSH entries and exact key (about 7 KB each: 6 GB at 1 M documents). Here the same decisions
come from five stages, each an array of independent tasks except two light serial ones:

    signatures  per input shard i/S   its candidates' signatures, ordinals and ids to ``dedup/sig/``; every band of
                                      every signature, every exact key and every id hashed into one of P partitions
                                      (``dedup/parts/``)
    pairs       per partition p/P     equal band values -> candidate pairs, kept only when the MinHash similarity
                                      reaches the threshold (the check ``Deduplicator`` makes); equal exact keys and
                                      equal ids -> groups. Signatures are read only for documents in a shared bucket.
    decide      one task              "first kept wins" in document order over the involved documents only
                                      (memory proportional to the duplicates, not the corpus)
    write       per input shard i/S   chunks kept documents and writes rejects, in document order
    join        one task              the shards' outputs interleaved into documents.jsonl, rejects.jsonl, report.json

Every task writes all its files through ``AtomicFiles`` with a JSON marker renamed last; the next stage refuses to
start until every marker it needs exists and agrees on the settings. A killed task is simply rerun: it rewrites the
same bytes.

Why the decisions are the same as ``merge``'s. ``merge`` keeps a document D unless (1) a kept document before it has
D's exact key (reason ``exact_duplicate``), or (2) a kept document before it shares a whole LSH band with D and
their MinHash similarity reaches the threshold (``near_duplicate``; ``duplicate_of`` is the most similar, the
earliest of equals). Only kept documents count, so a dropped document never causes a later drop. Both conditions
are about pairs and groups that the parallel stages find once and for all; only "kept" depends on order, which
``decide`` replays serially over the documents that have a partner. Two refinements keep pair counts linear in
the number of copies: documents with identical signatures (a *class*: same similarity to everything, at most one
member kept) are paired once through their first member, and a pair sharing several bands is emitted only from
the first band it shares (bands are verified by value, so a 64-bit band-hash collision cannot create a pair).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from megatron_huatuo.atomic import AtomicFiles, single_writer
from preprocessing.prepare.config import InputError, PrepareConfig, Source
from preprocessing.prepare.dedup import band_shape, similar
from preprocessing.prepare import pipeline
from preprocessing.sharding import Shard, ShardError, merge_counts, read_records, shard_path

DEDUP = "dedup"
STAGES = ("signatures", "pairs", "decide", "write", "join")
ORDINALS = np.dtype("<i8")
# A hashed item (band, exact key, id) of one document, in the partition file of its hash.
HASHED = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("ordinal", "<i8")])
PAIR = np.dtype([("a", "<i8"), ("b", "<i8"), ("count", "<u4")])  # classes a < b and their equal hash values
LINK = np.dtype([("leader", "<i8"), ("member", "<i8")])  # a member of a group and its group's first document
REASON_CODES = {1: "exact_duplicate", 2: "near_duplicate"}
SMALL_BUCKET = 64  # buckets up to this size compare all their members at once
READ_BATCH = 1 << 14  # candidates parsed at a time (their text is dropped at once)


@dataclass(frozen=True)
class Layout:
    """Where every stage's files live under ``OUT/dedup`` for S input shards and P partitions."""

    out: Path
    shards: int
    partitions: int

    @property
    def root(self) -> Path:
        return self.out / DEDUP

    def sig(self, shard: Shard, what: str) -> Path:
        return self.root / "sig" / f"{shard.name}.{what}"

    def part(self, p: Shard, shard: Shard, what: str) -> Path:
        return self.root / "parts" / p.name.replace("shard", "part") / f"{shard.name}.{what}.bin"

    def pairs(self, p: Shard, what: str) -> Path:
        return self.root / "pairs" / f"{p.name.replace('shard', 'part')}.{what}"

    def decisions(self, shard: Shard) -> Path:
        return self.root / "decide" / f"{shard.name}.decisions.jsonl"

    @property
    def decided(self) -> Path:
        return self.root / "decide" / "decide.json"

    def written(self, shard: Shard, what: str) -> Path:
        return self.root / "write" / f"{shard.name}.{what}"

    def shard_list(self) -> tuple[Shard, ...]:
        return Shard(0, self.shards).all()

    def partition_list(self) -> tuple[Shard, ...]:
        return Shard(0, self.partitions).all()


def _task(stage: str, of: str = "shard"):
    """One writer per task: ``OUT/dedup/<stage>-<shard or partition>`` is locked for the call (a task started twice
    by accident, or a rerun while the first still runs, stops at once naming the holder)."""
    def target(args: dict) -> Path:
        part = args.get(of)
        name = f"{stage}-{part.name}" if isinstance(part, Shard) else stage
        return Path(args["out_dir"]) / "dedup" / name
    return single_writer(target)


def _check_counts(shards: int, partitions: int) -> None:
    if shards < 1 or partitions < 1:
        raise ShardError(f"--shards and --partitions must be at least 1, got {shards} and {partitions}")


def _marker(path: Path, what: str, expect: dict) -> dict:
    """A finished task's marker; it must exist and carry ``expect`` (settings shared by every task of the run)."""
    if not path.exists():
        raise ShardError(f"{path} is missing: {what} has not finished; run it first")
    rec = json.loads(path.read_text(encoding="utf-8"))
    for k, v in expect.items():
        if rec.get(k) != v:
            raise ShardError(f"{path}: {what} ran with {k}={rec.get(k)!r}, this run has {v!r}; rerun it")
    return rec


def _json(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def _near(cfg: PrepareConfig) -> Optional[tuple[int, int]]:
    """(bands, rows) of the near-duplicate LSH, or None for exact dedup only; refuses what datasketch refuses."""
    if cfg.near_dup_threshold >= 1:
        return None
    b, r = band_shape(cfg.near_dup_threshold, cfg.num_perm)
    if b < 2:
        raise InputError(f"near_dup_threshold {cfg.near_dup_threshold} with num_perm {cfg.num_perm} gives {b} LSH "
                         "band (datasketch needs at least 2): lower the threshold or raise num_perm")
    return b, r


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a hash of each band's values and its index (only the partition and bucket use it; equal
    values are checked by value later)."""
    out = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(len(sigs), np.uint64(j + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for v in sigs[:, j * rows:(j + 1) * rows].T:
                h = _mix(h ^ v.astype(np.uint64))
            out[:, j] = h
    return out


def _id_hash(source: str, doc_id: str) -> bytes:
    return hashlib.blake2b(f"{source}\0{doc_id}".encode("utf-8"), digest_size=16).digest()


def _split128(raw: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    both = np.frombuffer(b"".join(raw), dtype="<u8").reshape(-1, 2)
    return both[:, 0], both[:, 1]


# --- stage 1: signatures (per input shard) ------------------------------------------------------------------------
@_task("signatures")
def signatures(out_dir: str | Path, shard: Shard, partitions: int) -> dict:
    """Signatures, ordinals and ids of shard ``shard``'s candidates, and their hashed bands, keys and ids per
    partition; the marker ``dedup/sig/<shard>.json`` is renamed last."""
    out = Path(out_dir)
    lay = Layout(out, shard.count, partitions)
    _check_counts(shard.count, partitions)
    marker = lay.sig(shard, "json")
    marker.unlink(missing_ok=True)
    rep = pipeline.shard_report(out, shard)
    cfg = PrepareConfig(**rep["config"])
    near = _near(cfg)
    parts = lay.partition_list()
    kinds = ("bands", "keys", "ids")
    paths = [lay.sig(shard, w) for w in ("ords.bin", "sigs.bin", "names.idx", "names.jsonl")]
    paths += [lay.part(p, shard, k) for k in kinds for p in parts]
    cand = shard_path(out / pipeline.CANDIDATES, shard)
    n = 0
    with AtomicFiles(*paths, marker, binary=True) as files:
        ords_f, sigs_f, idx_f, names_f = files[:4]
        part_f = {k: files[4 + i * partitions:4 + (i + 1) * partitions] for i, k in enumerate(kinds)}
        offset, width = 0, None
        fields = ("ordinal", "source", "id", "key", "minhash")
        for batch in _batches(({k: r[k] for k in fields} for r in read_records(cand)), READ_BATCH):
            ords = np.fromiter((r["ordinal"] for r in batch), dtype=ORDINALS, count=len(batch))
            names = [_json_line([r["source"], r["id"]]) for r in batch]
            lengths = np.fromiter((len(x) for x in names), dtype=np.int64, count=len(batch))
            starts = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            offset += int(lengths.sum())
            try:
                keys = [bytes.fromhex(r["key"]) for r in batch]
                if any(len(k) != 16 for k in keys):
                    raise ValueError("not 32 hex digits")
            except ValueError as exc:
                raise InputError(f"{cand}: an exact-dedup key is not 32 hex digits ({exc}); rerun the shard") from None
            ords.tofile(ords_f)
            starts.tofile(idx_f)
            names_f.write(b"".join(names))
            _scatter(part_f["keys"], *_split128(keys), ords, partitions)
            _scatter(part_f["ids"], *_split128([_id_hash(r["source"], r["id"]) for r in batch]), ords, partitions)
            if near:
                sigs, width = _decode_batch(batch, cfg.num_perm, width, cand)
                sigs.tofile(sigs_f)
                bands, rows = near
                hashes = band_hashes(sigs, bands, rows)
                band_idx = np.broadcast_to(np.arange(bands, dtype=np.uint64), hashes.shape)
                _scatter(part_f["bands"], hashes.ravel(), band_idx.ravel(), np.repeat(ords, bands), partitions)
            n += len(batch)
        files[-1].write(_json({"stage": "signatures", "shard": [shard.index, shard.count], "partitions": partitions,
                               "config": asdict(cfg), "sources": rep["sources"], "documents": n,
                               "signature_bytes": width}))
    return {"shard": [shard.index, shard.count], "documents": n}


def _decode_batch(batch: list[dict], num_perm: int, width: Optional[int], where: Path
                  ) -> tuple[np.ndarray, Optional[int]]:
    """(n, num_perm) hash values of a batch's ``minhash`` strings and their width in bytes (4 for datasketch's
    default 32-bit scheme, 8 for 64-bit ones). Read from the strings' length, so this stage and the next need not
    import datasketch (and scipy behind it: ~3 s and ~50 MB per task); every signature must have that length."""
    try:
        raw = [base64.b64decode(r["minhash"], validate=True) for r in batch]
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: a MinHash is not base64; rerun the shard") from None
    size = width * num_perm if width else len(raw[0])
    if size % num_perm or size // num_perm not in (4, 8):
        raise InputError(f"{where}: ordinal {batch[0]['ordinal']}: a MinHash of {size} bytes is not {num_perm} "
                         "values of 4 or 8 bytes (num_perm differs from the shard pass's?)")
    for r, x in zip(batch, raw):
        if len(x) != size:
            raise InputError(f"{where}: ordinal {r['ordinal']}: MinHash of {len(x)} bytes, expected {size}")
    width = size // num_perm
    return np.frombuffer(b"".join(raw), dtype=f"<u{width}").reshape(len(batch), num_perm), width


def _json_line(value) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")


def _batches(items, n: int) -> Iterator[list]:
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _scatter(files, h0: np.ndarray, h1: np.ndarray, ords: np.ndarray, partitions: int) -> None:
    """Append ``(h0, h1, ordinal)`` records to the file of partition ``h0 % partitions`` (in input order)."""
    rec = np.empty(len(ords), dtype=HASHED)
    rec["h0"], rec["h1"], rec["ordinal"] = h0, h1, ords
    part = (rec["h0"] % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    cuts = np.searchsorted(part[order], np.arange(partitions + 1))
    for p in range(partitions):
        if cuts[p + 1] > cuts[p]:
            rec[order[cuts[p]:cuts[p + 1]]].tofile(files[p])


@dataclass(frozen=True)
class _Settings:
    cfg: PrepareConfig
    sources: list
    signature_dtype: np.dtype


def _sig_settings(lay: Layout) -> _Settings:
    """Config, sources and signature width every signatures task agreed on (all S markers must exist)."""
    markers = []
    for s in lay.shard_list():
        m = _marker(lay.sig(s, "json"), f"signatures --shard {s.index}/{s.count}",
                    {"shard": [s.index, s.count], "partitions": lay.partitions})
        if markers and (m["config"], m["sources"]) != (markers[0]["config"], markers[0]["sources"]):
            raise ShardError(f"{lay.sig(s, 'json')}: shard {s.index} ran with other settings or sources than shard "
                             "0; rerun prepare and signatures for it")
        markers.append(m)
    widths = {m["signature_bytes"] for m in markers} - {None}  # None: a shard without candidates
    if len(widths) > 1:
        raise ShardError(f"{lay.root / 'sig'}: the shards' MinHashes have different widths {sorted(widths)}; rerun "
                         "prepare for all shards with one datasketch version")
    return _Settings(PrepareConfig(**markers[0]["config"]), markers[0]["sources"],
                     np.dtype(f"<u{widths.pop() if widths else 4}"))


# --- stage 2: pairs (per partition) -------------------------------------------------------------------------------
def _load(paths: list[Path], dtype: np.dtype) -> np.ndarray:
    return np.concatenate([np.fromfile(p, dtype=dtype) for p in paths]) if paths else np.zeros(0, dtype)


def _runs(rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort hashed records by (h0, h1, ordinal); (sorted records, start of every run of >= 2 equal hashes + end)."""
    rec = rec[np.lexsort((rec["ordinal"], rec["h1"], rec["h0"]))]
    if len(rec) == 0:
        return rec, np.zeros((0, 2), np.int64)
    new = np.ones(len(rec), dtype=bool)
    new[1:] = (rec["h0"][1:] != rec["h0"][:-1]) | (rec["h1"][1:] != rec["h1"][:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(rec))
    big = ends - starts >= 2
    return rec, np.stack([starts[big], ends[big]], axis=1)


def _in_runs(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first record of its run, record) indices of every record inside the runs."""
    lens = runs[:, 1] - runs[:, 0]
    first = np.repeat(runs[:, 0], lens)
    return first, first + np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)


def _groups(rec: np.ndarray) -> np.ndarray:
    """LINK rows (first ordinal, ordinal) of every member of every group of >= 2 equal 128-bit hashes."""
    rec, runs = _runs(rec)
    first, member = _in_runs(runs)
    out = np.empty(len(member), dtype=LINK)
    out["leader"], out["member"] = rec["ordinal"][first], rec["ordinal"][member]
    return out


def read_signatures(lay: Layout, ordinals: np.ndarray, num_perm: int, dtype: np.dtype) -> np.ndarray:
    """Signature rows of the given sorted ordinals, one input shard's files mapped at a time (the shard owns
    ``ordinal % S``); a shard's pages are unmapped before the next is read."""
    out = np.empty((len(ordinals), num_perm), dtype=dtype)
    for s in lay.shard_list():
        pos = np.flatnonzero(ordinals % s.count == s.index)
        if not len(pos):
            continue
        ords = np.fromfile(lay.sig(s, "ords.bin"), dtype=ORDINALS)
        rows = np.searchsorted(ords, ordinals[pos])
        if (rows >= len(ords)).any() or (ords[np.minimum(rows, len(ords) - 1)] != ordinals[pos]).any():
            raise ShardError(f"{lay.sig(s, 'ords.bin')}: misses ordinals another stage found; rerun signatures "
                             f"--shard {s.index}/{s.count}")
        mm = np.memmap(lay.sig(s, "sigs.bin"), dtype=dtype, mode="r", shape=(len(ords), num_perm))
        out[pos] = mm[rows]
        del mm
    return out


class _PairFinder:
    """Candidate pairs of one partition's band buckets, checked by similarity (see the module docstring)."""

    def __init__(self, cfg: PrepareConfig, bands: int, rows: int):
        self.bands, self.rows, self.n = bands, rows, cfg.num_perm
        self.passes = np.array([similar(c, cfg.num_perm, cfg.near_dup_threshold) for c in range(cfg.num_perm + 1)])
        self.pairs: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []

    def _band_equal(self, eq: np.ndarray) -> np.ndarray:
        """(m, bands): whether each band's values are all equal, from an (m, num_perm) equality matrix."""
        return eq[:, :self.bands * self.rows].reshape(len(eq), self.bands, self.rows).all(axis=2)

    def pairs_of_two(self, band: np.ndarray, a: np.ndarray, b: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> None:
        """Buckets of exactly two documents (most of them), all at once: ordinals a < b, their signatures."""
        eq = sa == sb
        be = self._band_equal(eq)
        m = np.arange(len(a))
        really = be[m, band]  # the bucket's band values are equal, not just its hash
        counts = eq.sum(axis=1)
        same = really & (counts == self.n)
        self.classes.append(np.stack([a, b], axis=1)[same & (band == 0)])
        near = really & ~same & self.passes[counts] & (be.argmax(axis=1) == band)
        self.pairs.append(np.stack([a[near], b[near], counts[near]], axis=1))

    def bucket(self, band: int, ords: np.ndarray, sigs: np.ndarray) -> None:
        """A bucket of any size: ordinals ascending, their signatures."""
        sl = slice(band * self.rows, (band + 1) * self.rows)
        if not (sigs[:, sl] == sigs[0, sl]).all():  # a band-hash collision: split by the real values
            _, inv = np.unique(sigs[:, sl], axis=0, return_inverse=True)
            for g in np.unique(inv.ravel()):
                pick = inv.ravel() == g
                if pick.sum() >= 2:
                    self.bucket(band, ords[pick], sigs[pick])
            return
        m = len(ords)
        counts = None
        if m <= SMALL_BUCKET:  # all equal-value counts at once (m x m x num_perm booleans)
            counts = (sigs[:, None, :] == sigs[None, :, :]).sum(axis=2)
            first = (counts == self.n).argmax(axis=1)  # each member's first identical member (itself if none)
        else:
            _, first_u, inv = np.unique(sigs, axis=0, return_index=True, return_inverse=True)
            first = first_u[inv.ravel()]
        alone = first == np.arange(m)
        if band == 0:  # a class is recorded once: from its band-0 bucket (all its members are there)
            self.classes.append(np.stack([ords[first[~alone]], ords[~alone]], axis=1))
        reps = np.flatnonzero(alone)  # classes by their first (smallest) ordinal
        if counts is not None:
            i, j = np.triu_indices(len(reps), 1)
            a, b = reps[i], reps[j]
            c = counts[a, b]
            ok = self.passes[c]
            a, b, c = a[ok], b[ok], c[ok]
            first_band = self._band_equal(sigs[a] == sigs[b]).argmax(axis=1) if len(a) else np.zeros(0, np.int64)
            keep = first_band == band
            self.pairs.append(np.stack([ords[a[keep]], ords[b[keep]], c[keep]], axis=1))
            return
        rsig, rords = sigs[reps], ords[reps]
        for k in range(len(reps) - 1):
            eq = rsig[k + 1:] == rsig[k]
            c = eq.sum(axis=1)
            ok = self.passes[c] & (self._band_equal(eq).argmax(axis=1) == band)
            if ok.any():
                self.pairs.append(np.stack([np.full(int(ok.sum()), rords[k]), rords[k + 1:][ok], c[ok]], axis=1))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 3), np.int64)
        classes = np.concatenate(self.classes) if self.classes else np.zeros((0, 2), np.int64)
        p = np.empty(len(pairs), dtype=PAIR)
        p["a"], p["b"], p["count"] = pairs[:, 0], pairs[:, 1], pairs[:, 2]
        c = np.empty(len(classes), dtype=LINK)
        c["leader"], c["member"] = classes[:, 0], classes[:, 1]
        return p, c


@_task("pairs", of="partition")
def pairs(out_dir: str | Path, shards: int, partition: Shard) -> dict:
    """Exact-key groups, id groups, identical-signature classes and similar pairs of partition ``partition``."""
    lay = Layout(Path(out_dir), shards, partition.count)
    _check_counts(shards, partition.count)
    marker = lay.pairs(partition, "json")
    marker.unlink(missing_ok=True)
    settings = _sig_settings(lay)
    cfg = settings.cfg
    near = _near(cfg)
    inputs = {k: [lay.part(partition, s, k) for s in lay.shard_list()] for k in ("bands", "keys", "ids")}
    exact = _groups(_load(inputs["keys"], HASHED))
    ids = _groups(_load(inputs["ids"], HASHED))
    finder = None
    involved = 0
    if near:
        finder = _PairFinder(cfg, *near)
        rec, runs = _runs(_load(inputs["bands"], HASHED))
        ordinals = np.unique(rec["ordinal"][_in_runs(runs)[1]])
        involved = len(ordinals)
        sigs = read_signatures(lay, ordinals, cfg.num_perm, settings.signature_dtype)
        size = runs[:, 1] - runs[:, 0]
        band_of = rec["h1"][runs[:, 0]].astype(np.int64)
        two = runs[size == 2, 0]
        for lo in range(0, len(two), 1 << 15):  # bounded temporaries: (chunk, num_perm) booleans
            s = two[lo:lo + (1 << 15)]
            a, b = rec["ordinal"][s], rec["ordinal"][s + 1]
            finder.pairs_of_two(rec["h1"][s].astype(np.int64), a, b, sigs[np.searchsorted(ordinals, a)],
                                sigs[np.searchsorted(ordinals, b)])
        for (s, e), band in zip(runs[size > 2], band_of[size > 2]):
            o = rec["ordinal"][s:e]
            finder.bucket(int(band), o, sigs[np.searchsorted(ordinals, o)])
        del sigs, rec
    near_pairs, classes = finder.result() if finder else (np.zeros(0, PAIR), np.zeros(0, LINK))
    summary = {"stage": "pairs", "partition": [partition.index, partition.count], "shards": shards,
               "exact_links": len(exact), "id_links": len(ids), "class_links": len(classes),
               "pairs": len(near_pairs), "signatures_read": involved}
    with AtomicFiles(lay.pairs(partition, "pairs.bin"), lay.pairs(partition, "classes.bin"),
                     lay.pairs(partition, "exact.bin"), lay.pairs(partition, "ids.bin"), marker, binary=True) as files:
        for f, arr in zip(files, (near_pairs, classes, exact, ids)):
            arr.tofile(f)
        files[-1].write(_json(summary))
    return summary


# --- stage 3: decide (one task) -----------------------------------------------------------------------------------
def _first_kept_wins(n: int, cls: np.ndarray, grp: np.ndarray, offsets: np.ndarray, partner: np.ndarray,
                     count: np.ndarray, near: bool) -> tuple[np.ndarray, np.ndarray]:
    """Replay ``Deduplicator`` over the n involved documents (indices in document order).

    ``cls[i]``: index of the first document with i's signature (i itself if alone); ``grp[i]``: index of the first
    document with i's exact key (-1 if alone); partners of class c: ``partner[offsets[c]:offsets[c+1]]`` with
    ``count`` equal hash values. Returns per document the reason code (0 kept) and the index it duplicates.
    """
    reason = np.zeros(n, dtype=np.uint8)
    target = np.full(n, -1, dtype=np.int64)
    class_kept = np.full(n, -1, dtype=np.int64)  # a class has at most one kept member: its first one kept
    group_kept = np.full(n, -1, dtype=np.int64)
    for lo in range(0, n, 1 << 16):  # Python lists per chunk: fast scalar access, bounded extra memory
        for i, c, g in zip(range(lo, min(n, lo + (1 << 16))), cls[lo:lo + (1 << 16)].tolist(),
                           grp[lo:lo + (1 << 16)].tolist()):
            if g >= 0 and group_kept[g] >= 0:
                reason[i], target[i] = 1, group_kept[g]
                continue
            if near:
                best = int(class_kept[c])  # an identical signature kept: similarity 1, nothing beats it
                a, b = offsets[c], offsets[c + 1]
                if best < 0 and b > a:
                    kept = class_kept[partner[a:b]]
                    has = kept >= 0
                    if has.any():
                        k, cnt = kept[has], count[a:b][has]
                        best = int(k[cnt == cnt.max()].min())  # the most similar kept, the earliest of equals
                if best >= 0:
                    reason[i], target[i] = 2, best
                    continue
            class_kept[c] = i
            if g >= 0:
                group_kept[g] = i
    return reason, target


class _Names:
    """(source, id) of documents by ordinal, read from the signatures stage's name files."""

    def __init__(self, lay: Layout):
        self.lay = lay

    def lookup(self, ordinals: np.ndarray) -> dict[int, tuple[str, str]]:
        found: dict[int, tuple[str, str]] = {}
        ordinals = np.unique(ordinals)
        for s in self.lay.shard_list():
            want = ordinals[ordinals % s.count == s.index]
            if not len(want):
                continue
            ords = np.fromfile(self.lay.sig(s, "ords.bin"), dtype=ORDINALS)
            starts = np.fromfile(self.lay.sig(s, "names.idx"), dtype=np.int64)
            rows = np.searchsorted(ords, want)
            with open(self.lay.sig(s, "names.jsonl"), "rb") as fh:
                for o, row in zip(want.tolist(), rows.tolist()):
                    fh.seek(int(starts[row]))
                    found[o] = tuple(json.loads(fh.readline()))
        return found


@_task("decide", of="")
def decide(out_dir: str | Path, shards: int, partitions: int) -> dict:
    """Every involved document's fate, in document order; writes ``dedup/decide/<shard>.decisions.jsonl`` (the
    dropped documents of each input shard: ordinal, reason, duplicate_of) and the marker ``decide.json``."""
    lay = Layout(Path(out_dir), shards, partitions)
    _check_counts(shards, partitions)
    lay.decided.unlink(missing_ok=True)
    settings = _sig_settings(lay)
    cfg, source_list = settings.cfg, settings.sources
    near = _near(cfg) is not None
    for p in lay.partition_list():
        _marker(lay.pairs(p, "json"), f"pairs --partition {p.index}/{p.count}",
                {"partition": [p.index, p.count], "shards": shards})
    load = {k: _load([lay.pairs(p, f"{k}.bin") for p in lay.partition_list()], dt)
            for k, dt in (("pairs", PAIR), ("classes", LINK), ("exact", LINK), ("ids", LINK))}
    pr, cl, ex = load["pairs"], load["classes"], load["exact"]
    inv = np.unique(np.concatenate([pr["a"], pr["b"], cl["leader"], cl["member"], ex["leader"], ex["member"]]))
    n = len(inv)
    cls = np.arange(n, dtype=np.int64)
    cls[np.searchsorted(inv, cl["member"])] = np.searchsorted(inv, cl["leader"])
    grp = np.full(n, -1, dtype=np.int64)
    grp[np.searchsorted(inv, ex["member"])] = np.searchsorted(inv, ex["leader"])
    src = np.concatenate([np.searchsorted(inv, pr["a"]), np.searchsorted(inv, pr["b"])])
    dst = np.concatenate([np.searchsorted(inv, pr["b"]), np.searchsorted(inv, pr["a"])])
    cnt = np.concatenate([pr["count"], pr["count"]]).astype(np.int64)
    order = np.argsort(src, kind="stable")
    offsets = np.searchsorted(src[order], np.arange(n + 1))
    reason, target = _first_kept_wins(n, cls, grp, offsets, dst[order], cnt[order], near)
    del cls, grp, src, dst, cnt, order, offsets
    dropped = np.flatnonzero(reason)
    drop_ords, drop_reason, drop_target = inv[dropped], reason[dropped], inv[target[dropped]]
    names = _Names(lay)
    _check_ids(load["ids"], drop_ords, names, {s["name"]: s for s in source_list})
    targets = names.lookup(drop_target)
    files = [lay.decisions(s) for s in lay.shard_list()]
    counts = {name: int((drop_reason == code).sum()) for code, name in REASON_CODES.items()}
    summary = {"stage": "decide", "shards": shards, "partitions": partitions, "involved": n,
               "pairs": len(pr), "dropped": counts}
    with AtomicFiles(*files, lay.decided) as fs:
        for o, r, t in zip(drop_ords.tolist(), drop_reason.tolist(), drop_target.tolist()):
            fs[o % shards].write(json.dumps({"ordinal": o, "reason": REASON_CODES[r],
                                             "duplicate_of": list(targets[t])}, ensure_ascii=False) + "\n")
        fs[-1].write(json.dumps(summary, sort_keys=True) + "\n")
    return summary


def _check_ids(links: np.ndarray, dropped: np.ndarray, names: _Names, sources: dict) -> None:
    """``merge``'s error for two kept documents of one source with one id, raised for the first such document.

    ``links`` group the documents by a 128-bit hash of (source, id); groups with two or more kept members are checked
    by their real names, in document order.
    """
    if not len(links):
        return
    pos = np.searchsorted(dropped, links["member"])
    is_dropped = (pos < len(dropped)) & (dropped[np.minimum(pos, max(len(dropped) - 1, 0))] == links["member"]) \
        if len(dropped) else np.zeros(len(links), dtype=bool)
    kept = links[~is_dropped]
    leaders, n_kept = np.unique(kept["leader"], return_counts=True)
    suspects = kept["member"][np.isin(kept["leader"], leaders[n_kept >= 2])]
    if not len(suspects):
        return
    found = names.lookup(suspects)
    seen: set = set()
    for o in sorted(found):
        if found[o] in seen:
            name, doc_id = found[o]
            raise pipeline.duplicate_id_error(Source(**sources[name]), doc_id)
        seen.add(found[o])


# --- stage 4: write (per input shard) ------------------------------------------------------------------------------
@_task("write")
def write(out_dir: str | Path, shard: Shard) -> dict:
    """This shard's documents (chunked) and rejects, each line prefixed with its ordinal for the join."""
    out = Path(out_dir)
    rep = pipeline.shard_report(out, shard)
    cfg = PrepareConfig(**rep["config"])
    decided = json.loads(_need(Layout(out, shard.count, 1).decided, "decide").read_text(encoding="utf-8"))
    lay = Layout(out, shard.count, decided["partitions"])
    if decided["shards"] != shard.count:
        raise ShardError(f"{lay.decided}: decide ran for {decided['shards']} shards, this is shard "
                         f"{shard.index}/{shard.count}")
    marker = lay.written(shard, "json")
    marker.unlink(missing_ok=True)
    kinds = {s["name"]: s["kind"] for s in rep["sources"]}
    counts = {name: {"kept": 0, "chunks": 0, "dropped": {r: 0 for r in pipeline.DEDUP_REASONS}} for name in kinds}
    decisions = read_records(lay.decisions(shard))
    filtered = read_records(shard_path(out / pipeline.FILTER_REJECTS, shard))
    nxt, pending = next(decisions, None), next(filtered, None)
    with AtomicFiles(lay.written(shard, "documents.txt"), lay.written(shard, "rejects.txt"), marker) as (
            docs_f, rej_f, mark_f):
        for rec in read_records(shard_path(out / pipeline.CANDIDATES, shard)):
            ordinal, name = rec["ordinal"], rec["source"]
            while pending is not None and pending["ordinal"] < ordinal:
                rej_f.write(f"{pending['ordinal']}\t{pipeline._line(pending)}")
                pending = next(filtered, None)
            if nxt is not None and nxt["ordinal"] == ordinal:
                counts[name]["dropped"][nxt["reason"]] += 1
                rej_f.write(f"{ordinal}\t{pipeline.dedup_reject_line(rec, nxt['reason'], tuple(nxt['duplicate_of']))}")
                nxt = next(decisions, None)
            else:
                pieces = pipeline.kept_lines(rec, cfg, kinds[name])
                docs_f.writelines(f"{ordinal}\t{x}" for x in pieces)
                counts[name]["kept"] += 1
                counts[name]["chunks"] += len(pieces)
        while pending is not None:
            rej_f.write(f"{pending['ordinal']}\t{pipeline._line(pending)}")
            pending = next(filtered, None)
        if nxt is not None:
            raise ShardError(f"{lay.decisions(shard)}: ordinal {nxt['ordinal']} is not a candidate of shard "
                             f"{shard.index}/{shard.count}; rerun prepare, signatures and decide")
        summary = {"stage": "write", "shard": [shard.index, shard.count], "per_source": counts}
        mark_f.write(json.dumps(summary, sort_keys=True) + "\n")
    return summary


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise ShardError(f"{path} is missing: {stage} has not finished; run it first")
    return path


# --- stage 5: join (one task) --------------------------------------------------------------------------------------
def _strip(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            o, _, rest = line.partition("\t")
            yield int(o), rest


@single_writer(lambda a: Path(a["out_dir"]))  # the final files, like prepare-merge
def join(out_dir: str | Path, shards: int) -> dict:
    """``documents.jsonl``, ``rejects.jsonl`` and ``report.json``: the bytes ``merge`` writes."""
    out = Path(out_dir)
    cfg, sources, counts = pipeline.settings_of(out, shards)
    lay = Layout(out, shards, 1)
    marks = [_marker(lay.written(s, "json"), f"write --shard {s.index}/{s.count}", {"shard": [s.index, s.count]})
             for s in lay.shard_list()]
    per_source = pipeline.per_source_table(sources, counts)
    written = merge_counts([m["per_source"] for m in marks])
    for name, p in per_source.items():
        p["kept"], p["chunks"] = written[name]["kept"], written[name]["chunks"]
        p["dropped"].update(written[name]["dropped"])
    with AtomicFiles(out / "documents.jsonl", out / "rejects.jsonl") as (docs_f, rej_f):
        for f, what in ((docs_f, "documents.txt"), (rej_f, "rejects.txt")):
            parts = [_strip(lay.written(s, what)) for s in lay.shard_list()]
            f.writelines(line for _, line in heapq.merge(*parts, key=lambda x: x[0]))
    report = pipeline.write_report(out, per_source, cfg, shards)
    if shards == 1:  # an unsharded run leaves only its three outputs, as merge does
        import shutil

        shutil.rmtree(lay.root, ignore_errors=True)
    return report


# --- all stages in sequence (one machine) -------------------------------------------------------------------------
def run_all(out_dir: str | Path, shards: int, partitions: int, first_stage: str = "signatures") -> dict:
    """Every stage's tasks one after another, the same functions the Slurm array tasks call."""
    start = STAGES.index(first_stage)
    shard_list, parts = Shard(0, shards).all(), Shard(0, partitions).all()
    if start <= 0:
        for s in shard_list:
            signatures(out_dir, s, partitions)
    if start <= 1:
        for p in parts:
            pairs(out_dir, shards, p)
    if start <= 2:
        decide(out_dir, shards, partitions)
    if start <= 3:
        for s in shard_list:
            write(out_dir, s)
    return join(out_dir, shards)


def peak_rss_mib() -> float:
    """Peak resident memory of this process's address space (MiB; Linux's VmHWM, which unlike ru_maxrss does not
    carry a forking parent's peak across exec), NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return float("nan")
