"""The staged dedup (preprocessing/prepare/staged.py) against the one-process merge (pipeline.merge, datasketch's
MinHashLSH): the same documents.jsonl, rejects.jsonl and report.json bytes.

Inputs are shard outputs written here with chosen MinHash values, so every case the decision rule distinguishes can
be built on purpose: a hand-checked corpus (expected decisions written out below, then both engines) and generated
corpora with chains of edits, identical signatures under other keys, equal keys under other signatures and ties
(property-style, several seeds and shard/partition counts). End to end: real text through `prepare --shard` and the
CLI stages, a stage killed half-way and rerun, and the errors.
"""
from __future__ import annotations

import base64
import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from preprocessing.prepare import InputError, PrepareConfig, Source, merge, run_shard
from preprocessing.prepare import pipeline, staged
from preprocessing.prepare.filters import FILTER_REASONS
from preprocessing.sharding import Shard, ShardError, shard_path

OUTPUTS = ("documents.jsonl", "rejects.jsonl", "report.json")


def sig(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<u4").tobytes()).decode("ascii")


def write_shards(out: Path, docs: list[dict], cfg: PrepareConfig, shards: int, filtered=()) -> None:
    """What ``prepare --shard i/S`` writes for candidates ``docs`` (dicts with source, id, key, values, text) and
    filter-rejected ordinals ``filtered`` (documents numbered in one sequence with them)."""
    sources = [Source(name, "web", "en", str(out / f"{name}.jsonl")) for name in ("a", "b")]
    rows, it = [], iter(docs)
    for ordinal in range(len(docs) + len(filtered)):
        if ordinal in filtered:
            rows.append({"ordinal": ordinal, "source": "a", "id": f"f{ordinal}", "reason": "too_short", "value": 3.0,
                         "preview": "short"})
        else:
            d = next(it)
            rows.append({"ordinal": ordinal, "source": d["source"], "id": d["id"], "lang": "en", "key": d["key"],
                         "minhash": sig(d["values"]), "text": d["text"]})
    for s in Shard(0, shards).all():
        mine = [r for r in rows if s.owns(r["ordinal"])]
        counts = {src.name: {"read": sum(r["source"] == src.name for r in mine),
                             "dropped": {reason: sum(r["source"] == src.name and r.get("reason") == reason
                                                     for r in mine) for reason in FILTER_REASONS}}
                  for src in sources}
        for name, keep in ((pipeline.CANDIDATES, lambda r: "key" in r), (pipeline.FILTER_REJECTS,
                                                                          lambda r: "reason" in r)):
            path = shard_path(out / name, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mine if keep(r)))
        report = {"shard": [s.index, s.count], "config": asdict(cfg), "sources": [asdict(x) for x in sources],
                  "counts": counts}
        shard_path(out / pipeline.SHARD_REPORT, s).write_text(json.dumps(report))


def both_engines(tmp_path: Path, docs, cfg, shards: int, partitions: int, filtered=()) -> dict:
    """Run merge and the staged dedup on the same shard files; assert equal bytes; return the rejects by id."""
    a, b = tmp_path / f"merge-{shards}-{partitions}", tmp_path / f"staged-{shards}-{partitions}"
    write_shards(a, docs, cfg, shards, filtered)
    shutil.copytree(a, b)
    merge(a, shards)
    staged.run_all(b, shards, partitions)
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return {r["id"]: (r["reason"], r.get("duplicate_of", {}).get("id"))
            for r in map(json.loads, (a / "rejects.jsonl").read_text().splitlines())}


def test_hand_checked_decisions(tmp_path):
    """128 permutations, threshold 0.85 (at least 109 equal values), 16 bands of 8: every rule written out."""
    rng = np.random.default_rng(0)

    def base():
        return rng.integers(0, 2**32, 128, dtype=np.uint64)

    def edit(v, positions, source=None):
        v = v.copy()
        v[list(positions)] = source[list(positions)] if source is not None else rng.integers(0, 2**32, len(positions))
        return v

    A = base()
    B = edit(A, range(10))  # 118/128 like A
    C = edit(B, range(100, 112))  # 116/128 like B, 106/128 (< 0.85) like A
    D = base()
    E = edit(D, range(20))  # 108/128 like D: not a duplicate
    F = edit(D, range(10), source=E)  # 118 like D and 118 like E: the earlier wins
    G = edit(D, range(11), source=E)  # 117 like D, 119 like E: the more similar wins
    H, X, M = base(), base(), base()
    N = edit(M, range(0, 128, 8))  # 112/128 similar, but no whole band in common: never a candidate
    key = {n: f"{i:032x}" for i, n in enumerate("ABCDEFGHIJKLMN")}
    docs = [("A", A, "A"), ("B", B, "B"), ("C", C, "C"), ("D", D, "D"), ("E", E, "E"), ("F", F, "F"), ("G", G, "G"),
            ("H", H, "H"),
            ("I", X, "H"),  # H's key, another signature: exact duplicate of H
            ("J", X, "J"),  # I's signature, its own key: I was dropped, so J is kept
            ("K", X, "K"),  # J's signature: near duplicate of J (similarity 1)
            ("L", X, "H"),  # H's key and I's signature: exact duplicate of H
            ("M", M, "M"), ("N", N, "N")]
    docs = [{"source": "a", "id": i, "key": key[k], "values": v, "text": f"document {i}"} for i, v, k in docs]
    expected = {"B": ("near_duplicate", "A"), "F": ("near_duplicate", "D"), "G": ("near_duplicate", "E"),
                "I": ("exact_duplicate", "H"), "K": ("near_duplicate", "J"), "L": ("exact_duplicate", "H")}
    cfg = PrepareConfig()
    assert staged.band_shape(cfg.near_dup_threshold, 128) == (16, 8)
    for shards, partitions in ((1, 1), (3, 4)):
        rejects = both_engines(tmp_path, docs, cfg, shards, partitions, filtered={2, 9})
        assert {k: v for k, v in rejects.items() if not k.startswith("f")} == expected


def generated(seed: int, n: int, num_perm: int) -> list[dict]:
    """Families of documents derived by chains of edits (similarity decays along a chain, so "similar" is not
    transitive), exact copies, copies under another key, other signatures under a copied key."""
    rnd = random.Random(seed)
    docs: list[dict] = []
    for i in range(n):
        roll = rnd.random()
        if docs and roll < 0.55:
            parent = rnd.choice(docs[-30:])
            values = list(parent["values"])
            for p in rnd.sample(range(num_perm), rnd.choice([0, 1, 2, 3, 4, 6, 8, 12, 16])):
                values[p] = rnd.randrange(2**32) if rnd.random() < 0.7 else rnd.randrange(4)
            key = parent["key"] if rnd.random() < 0.3 else f"{rnd.getrandbits(128):032x}"
        elif docs and roll < 0.62:
            values, key = list(rnd.choice(docs)["values"]), rnd.choice(docs)["key"]  # mixed-up copies
        else:
            values, key = [rnd.randrange(2**32) for _ in range(num_perm)], f"{rnd.getrandbits(128):032x}"
        docs.append({"source": rnd.choice("ab"), "id": f"d{i}", "key": key, "values": values,
                     "text": f"generated document {i} " * rnd.randint(1, 30)})
    return docs


@pytest.mark.parametrize("seed", range(6))
def test_generated_corpora_get_the_merges_decisions(tmp_path, seed, monkeypatch):
    if seed % 2:  # every bucket through the one-row-at-a-time path (else buckets up to 64 go all at once)
        monkeypatch.setattr(staged, "SMALL_BUCKET", 1)
    num_perm, threshold = [(16, 0.7), (32, 0.8), (32, 0.5), (64, 0.85), (16, 0.9), (32, 1.0)][seed]
    cfg = PrepareConfig(num_perm=num_perm, near_dup_threshold=threshold, max_chars=120)
    docs = generated(seed, 400, num_perm)
    rejects = both_engines(tmp_path, docs, cfg, shards=1 + seed % 3, partitions=[1, 3, 8][seed % 3],
                           filtered={5, 77, 300})
    dups = [r for r, _ in rejects.values() if r.endswith("duplicate")]
    assert len(dups) > 50 and (threshold == 1.0 or "near_duplicate" in dups)


def test_duplicate_ids_are_refused_like_the_merge(tmp_path):
    rnd = random.Random(99)
    docs = generated(1, 60, 16)
    docs[40]["id"], docs[40]["source"] = docs[0]["id"], docs[0]["source"]  # the first document is kept
    docs[40]["values"], docs[40]["key"] = [rnd.randrange(2**32) for _ in range(16)], "f" * 32  # kept for sure
    cfg = PrepareConfig(num_perm=16, near_dup_threshold=0.7)
    a, b = tmp_path / "a", tmp_path / "b"
    write_shards(a, docs, cfg, 2)
    shutil.copytree(a, b)
    with pytest.raises(InputError) as merged:
        merge(a, 2)
    with pytest.raises(InputError) as staged_exc:
        staged.run_all(b, 2, 3)
    assert str(staged_exc.value) == str(merged.value)
    assert f"duplicate document id {docs[0]['id']!r}" in str(merged.value)
    assert not (b / "dedup" / "decide" / "decide.json").exists()


# --- real text, CLI, reruns, errors -----------------------------------------------------------------------------
def cli(capsys, *args: str, ok: bool = True) -> tuple[str, str]:
    """``python -m preprocessing ARGS`` in this process (no interpreter start per stage); (stdout, stderr)."""
    from preprocessing.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    assert (code == 0) == ok, err
    return out, err


def test_cli_stages_on_real_text_equal_the_unsharded_run(tmp_path, capsys):
    from test_prepare import mixed_sources

    sources = mixed_sources(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps([asdict(s) for s in sources]))
    ref, out = tmp_path / "ref", tmp_path / "staged"
    common = ["--sources", str(tmp_path / "s.json"), "--max-chars", "300", "--quiet", "--workers", "1"]
    cli(capsys, "prepare", "--out", str(ref), *common)
    for i in range(2):
        cli(capsys, "prepare", "--out", str(out), "--shard", f"{i}/2", "--dedup-partitions", "3", *common)
    _, err = cli(capsys, "prepare-dedup", "decide", "--out", str(out), "--shards", "2", "--partitions", "3", ok=False)
    assert "part-00000-of-00003.json is missing: pairs --partition 0/3 has not finished" in err
    for p in range(3):
        cli(capsys, "prepare-dedup", "pairs", "--out", str(out), "--shards", "2", "--partition", f"{p}/3")
    cli(capsys, "prepare-dedup", "decide", "--out", str(out), "--shards", "2", "--partitions", "3")
    for i in range(2):
        cli(capsys, "prepare-dedup", "write", "--out", str(out), "--shard", f"{i}/2")
    summary = json.loads(cli(capsys, "prepare-dedup", "join", "--out", str(out), "--shards", "2")[0])
    assert summary["dropped"]["exact_duplicate"] >= 10 and summary["dropped"]["near_duplicate"] >= 8
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    one = tmp_path / "one"  # unsharded with the staged dedup: the same bytes, and only the three outputs left
    cli(capsys, "prepare", "--out", str(one), "--dedup-partitions", "2", *common)
    assert sorted(p.name for p in one.iterdir()) == sorted(OUTPUTS)
    for name in OUTPUTS:
        assert (one / name).read_bytes() == (ref / name).read_bytes(), name


def test_a_stage_killed_half_way_and_rerun_writes_the_same_bytes(tmp_path, monkeypatch):
    docs = generated(7, 300, 32)
    cfg = PrepareConfig(num_perm=32, near_dup_threshold=0.8, max_chars=100)
    ref, out = tmp_path / "ref", tmp_path / "out"
    write_shards(ref, docs, cfg, 2, filtered={10})
    shutil.copytree(ref, out)
    staged.run_all(ref, 2, 2)
    files = {p.relative_to(ref): p.read_bytes() for p in ref.rglob("*") if p.is_file()}

    real, calls = pipeline.kept_lines, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 40:
            raise KeyboardInterrupt("killed")
        return real(*args)

    for s in Shard(0, 2).all():
        staged.signatures(out, s, 2)
    for p in Shard(0, 2).all():
        staged.pairs(out, 2, p)
    staged.decide(out, 2, 2)
    monkeypatch.setattr(pipeline, "kept_lines", dying)
    with pytest.raises(KeyboardInterrupt):
        staged.write(out, Shard(0, 2))
    monkeypatch.setattr(pipeline, "kept_lines", real)
    assert not list(out.rglob("*.partial")) and not (out / "dedup/write/shard-00000-of-00002.json").exists()
    with pytest.raises(ShardError, match="write --shard 0/2 has not finished"):
        staged.join(out, 2)
    staged.run_all(out, 2, 2, first_stage="write")
    staged.run_all(out, 2, 2)  # every stage again over finished outputs: nothing changes
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_stages_refuse_mismatched_settings(tmp_path):
    docs = generated(3, 40, 16)
    cfg = PrepareConfig(num_perm=16, near_dup_threshold=0.7)
    write_shards(tmp_path, docs, cfg, 2)
    staged.signatures(tmp_path, Shard(0, 2), 4)
    staged.signatures(tmp_path, Shard(1, 2), 2)
    with pytest.raises(ShardError, match="signatures --shard 1/2 ran with partitions=2, this run has 4"):
        staged.pairs(tmp_path, 2, Shard(0, 4))
    with pytest.raises(ShardError, match="decide has not finished"):
        staged.write(tmp_path, Shard(0, 2))
