"""prepare: readers (JSONL, JSON, TXT, Parquet, save_to_disk, GB18030), cleaning, the pipeline's drops, dedup,
chunking, errors, and the identity of unsharded, sharded + merged and multi-worker runs.

References are hand-written expectations, the demo data's own design (demo/README.md: each web file holds one
exact duplicate, one near duplicate, one too-short and one symbol-only document, with ids saying so), pyarrow and
datasets writing the files the readers read, and Jaccard similarities computed here from plain word sets.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from huatuo_testing import REPO_ROOT, shared_file
from preprocessing.prepare import (REASONS, InputError, PrepareConfig, Source, chunk, clean, detect_encoding, merge,
                                   read_source, run, run_shard)
from preprocessing.prepare import readers
from preprocessing.sharding import Shard, ShardError

LONG = ("Hypertension is a common condition in which blood pressure stays high. It is linked to salt intake, "
        "obesity, lack of exercise and family history. Treatment includes salt reduction and drugs such as ACE "
        "inhibitors or calcium channel blockers, chosen by a doctor after repeated measurements.")
ASTHMA = ("Asthma is a chronic disease of the airways. Attacks of wheezing, cough and chest tightness follow "
          "allergens, cold air or exercise. Inhaled corticosteroids control it; a reliever inhaler opens the airways "
          "within minutes when an attack starts, and a written plan tells the patient what to do.")
OUTPUTS = ("documents.jsonl", "rejects.jsonl", "report.json")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def prepare(tmp_path: Path, sources: list[Source], cfg: PrepareConfig = PrepareConfig(), workers: int = 1):
    """Unsharded run through the library; returns (documents, rejects, report)."""
    out = tmp_path / "out"
    run_shard(sources, out, cfg, Shard(), workers)
    report = merge(out, 1)
    return lines(out / "documents.jsonl"), lines(out / "rejects.jsonl"), report


def demo_sources() -> list[Source]:
    from megatron_huatuo.demo.pipeline import DEMO_SOURCES

    return [Source(n, k, lang, str(REPO_ROOT / "demo" / rel), t, i) for n, k, lang, rel, t, i in DEMO_SOURCES]


# --- readers -----------------------------------------------------------------------------------------------------
def test_clean_removes_html_entities_control_chars_and_extra_space():
    assert clean("<div>Q: what&nbsp;is  it?</div>\x07\n\n  A:\tnothing  \u200b") == "Q: what is it?\nA: nothing"


def test_gb18030_text_is_decoded(tmp_path):
    text = "高血压患者能吃党参吗？\n\n糖尿病的典型症状是多饮、多食、多尿和体重下降。"
    path = tmp_path / "qa.txt"
    path.write_bytes(text.encode("gb18030"))
    docs = list(read_source(Source("qa.zh", "web", "zh", str(path))))
    assert docs == [("qa-zh-000", "高血压患者能吃党参吗？"), ("qa-zh-001", "糖尿病的典型症状是多饮、多食、多尿和体重下降。")]


def test_real_gb18030_doctor_qa_decodes():
    path = shared_file("corpora/zh/internal_medicine_qa.gb18030.txt")
    assert detect_encoding(path) == "gb18030"
    docs = list(read_source(Source("qa.zh", "web", "zh", str(path))))
    assert docs[0][1].startswith("高血压患者能吃党参吗？,我有高血压这两天女婿来的时候给我拿了些党参泡水喝")
    assert not any("\ufffd" in t for _, t in docs)
    blocks = [b for b in re.split(r"\n\s*\n", path.read_bytes().decode("gb18030")) if b.strip()]
    assert len(docs) == len(blocks)


def test_real_pubmed_abstracts_pass_the_english_check_and_fail_the_chinese_one(tmp_path):
    path = shared_file("corpora/en/pubmed_abstracts_299.json")
    n = len(json.loads(path.read_text(encoding="utf-8")))
    cfg = PrepareConfig(min_chars=0, min_letter_ratio=0)
    _, _, report = prepare(tmp_path / "en", [Source("pubmed", "literature", "en", str(path))], cfg)
    assert report["read"]["pubmed"] == n == 299 and report["dropped"]["wrong_language"] == 0
    _, _, report = prepare(tmp_path / "zh", [Source("pubmed", "literature", "zh", str(path))], cfg)
    assert report["dropped"]["wrong_language"] == n


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"pmid": [11, 12, 13, 14, 15], "body": [f"abstract {i}" for i in range(5)], "year": [2020] * 5}
    pq.write_table(pa.table(rows), tmp_path / "lit.parquet", row_group_size=2)
    src = Source("lit.en", "literature", "en", str(tmp_path / "lit.parquet"), text_field="body", id_field="pmid")
    assert list(read_source(src)) == [(str(i), t) for i, t in zip(rows["pmid"], rows["body"])]
    assert list(read_source(src, want=lambda i: i % 2 == 1)) == [None, ("12", "abstract 1"), None, ("14", "abstract 3"),
                                                                None]
    no_ids = Source("lit.en", "literature", "en", str(tmp_path / "lit.parquet"), text_field="body")
    assert [d[0] for d in read_source(no_ids)] == [f"lit-en-{i:03d}" for i in range(5)]
    with pytest.raises(InputError, match=r"lit\.parquet: no column 'text' \(columns: pmid, body, year\)"):
        list(read_source(Source("lit.en", "literature", "en", str(tmp_path / "lit.parquet"))))


def test_save_to_disk_reader(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "text": ["one", "two", "three"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert list(read_source(Source("enc.en", "encyclopedia", "en", str(tmp_path / "ds")))) == \
        [("a", "one"), ("b", "two"), ("c", "three")]
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "dd"))
    assert list(read_source(Source("enc.en", "encyclopedia", "en", str(tmp_path / "dd"), split="test"))) == \
        [("c", "three")]
    with pytest.raises(InputError, match="set split to one of train, test"):
        list(read_source(Source("enc.en", "encyclopedia", "en", str(tmp_path / "dd"))))


@pytest.mark.parametrize("block", [1, 5, 1 << 20])
def test_json_array_is_streamed_like_json_load_reads_it(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "_BLOCK", block)  # items cut at every possible place
    rows = [{"id": 12345, "text": "ab\"c\n", "meta": {"tags": [1, 2.5, None]}}, {"id": "x", "text": "高血压"},
            {"id": 7, "text": ""}]
    path = tmp_path / "a.json"
    path.write_text("\n [\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in rows) + "\n]\n",
                    encoding="utf-8")
    src = Source("lit.en", "literature", "en", str(path))
    assert list(read_source(src)) == [(str(r["id"]), r["text"]) for r in json.loads(path.read_text("utf-8"))]
    path.write_text('[{"id": 1, "text": "a"},\n {"id": 2, "text": "b"}\n {"id": 3}]', encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.json:3: not valid JSON: expected ',' or ']' between items"):
        list(read_source(src))
    path.write_text('[{"id": 1, "text": "a"},\n\n {"id": 2, "text": }]', encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.json:3: not valid JSON: Expecting value"):
        list(read_source(src))


def test_json_array_of_strings_gets_index_ids(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["first", "second"]), encoding="utf-8")
    assert list(read_source(Source("lit.en", "literature", "en", str(tmp_path / "a.json")))) == \
        [("lit-en-000", "first"), ("lit-en-001", "second")]


def test_bad_input_names_file_and_line_or_byte_offset(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_source(Source("s", "web", "en", str(path))))
    write_jsonl(path, [{"id": "a", "body": "x"}])
    with pytest.raises(InputError, match=r"bad\.jsonl: line 1: missing field 'text'"):
        list(read_source(Source("s", "web", "en", str(path))))
    # byte 4 is the first bad one in both encodings; with 3-byte blocks the "é" straddles a block boundary
    monkeypatch.setattr(readers, "_BLOCK", 3)
    path.write_bytes(b"ab" + "é".encode() + b"\xff\x80")
    with pytest.raises(InputError, match=r"bad\.jsonl: neither UTF-8 \(bad byte at offset 4\) nor GB18030 "
                                         r"\(bad byte at offset \d+\)"):
        detect_encoding(path)
    with pytest.raises(InputError, match="kind must be one of web, literature, encyclopedia, book, sft"):
        run_shard([Source("s", "news", "en", str(path))], tmp_path / "out", PrepareConfig())


# --- filters and dedup through the pipeline ----------------------------------------------------------------------
def test_filters_and_dedup_on_hand_made_documents(tmp_path):
    near = LONG.replace("measurements.", "readings.")
    assert word_jaccard(LONG, near) > 0.95
    rows = [{"id": "a", "text": LONG}, {"id": "b", "text": "<p>" + LONG + "</p>"}, {"id": "c", "text": near},
            {"id": "d", "text": "too short"}, {"id": "e", "text": "#### $$$$ %%%% " * 20},
            {"id": "f", "text": LONG.replace("Hypertension", "Diabetes").replace("blood pressure", "blood sugar")
             .replace("salt", "sugar").replace("ACE inhibitors or calcium channel blockers", "metformin or insulin")}]
    src = Source("web.en", "web", "en", str(write_jsonl(tmp_path / "w.jsonl", rows)))
    docs, rejects, report = prepare(tmp_path, [src])
    assert [d["id"] for d in docs] == ["a", "f"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("b", "exact_duplicate"), ("c", "near_duplicate"),
                                                          ("d", "too_short"), ("e", "few_letters")]
    assert rejects[0]["duplicate_of"] == {"source": "web.en", "id": "a"}
    expected = dict.fromkeys(REASONS, 0) | {"exact_duplicate": 1, "near_duplicate": 1, "too_short": 1,
                                            "few_letters": 1}
    assert report["dropped"] == expected and report["per_source"]["web.en"]["dropped"] == expected
    assert (report["read"], report["kept_documents"], report["chunks"]) == ({"web.en": 6}, 2, 2)
    assert docs[0] == {"id": "a", "source": "web.en", "kind": "web", "lang": "en", "text": LONG, "chunk_id": 0}


def word_jaccard(a: str, b: str, n: int = 3) -> float:
    def grams(t):
        w = re.findall(r"\w+", t.lower())
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_english_near_duplicates_by_word_shingles(tmp_path):
    base = " ".join(f"Patient {i} reported mild fever and cough after the visit on day {i}." for i in range(12))
    edited = base.replace("day 7.", "day seven.")  # one word changed
    rewritten = re.sub(r"Patient (\d+) reported", r"Case \1 showed", base)  # same vocabulary, other phrasing
    assert word_jaccard(base, edited) > 0.9 and word_jaccard(base, rewritten) < 0.5
    rows = [{"id": "base", "text": base}, {"id": "edited", "text": edited}, {"id": "rewritten", "text": rewritten}]
    src = Source("web.en", "web", "en", str(write_jsonl(tmp_path / "w.jsonl", rows)))
    docs, rejects, _ = prepare(tmp_path, [src], PrepareConfig(max_dup_ngram_fraction=1, max_top_ngram_fraction=1))
    assert [d["id"] for d in docs] == ["base", "rewritten"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("edited", "near_duplicate")]


def test_demo_corpora_drop_exactly_the_planted_documents(tmp_path):
    docs, rejects, report = prepare(tmp_path, demo_sources())
    expected = {(f"web-{lang}-{suffix}", reason) for lang in ("en", "zh")
                for reason, suffix in (("exact_duplicate", "dup-exact"), ("near_duplicate", "dup-near"),
                                       ("too_short", "junk-short"), ("few_letters", "junk-symbols"))}
    assert {(r["id"], r["reason"]) for r in rejects} == expected
    assert len(docs) == report["kept_documents"] == 8 * 24


def test_chunking_splits_long_documents_at_sentence_ends():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = chunk(text, 200)
    assert all(len(p) <= 200 for p in pieces) and len(pieces) > 1
    assert all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text


# --- identity: sharded + merged, workers, reruns -------------------------------------------------------------------
def mixed_sources(tmp_path: Path) -> list[Source]:
    """The demo corpora plus a Parquet source whose documents repeat demo documents (cross-shard duplicates)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    web = [json.loads(x) for x in (REPO_ROOT / "demo/corpora/web.en.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in web[:10]] + [r["text"].replace("doctor", "physician") for r in web[10:20]]
    pq.write_table(pa.table({"text": texts}), tmp_path / "mirror.parquet")
    return demo_sources() + [Source("mirror.en", "web", "en", str(tmp_path / "mirror.parquet"))]


def read_outputs(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_sharded_runs_merge_to_the_unsharded_bytes_and_workers_do_not_matter(tmp_path):
    sources = mixed_sources(tmp_path)
    cfg = PrepareConfig(max_chars=300)  # chunking too
    run_shard(sources, tmp_path / "whole", cfg, Shard(), workers=1)
    merge(tmp_path / "whole", 1)
    whole = read_outputs(tmp_path / "whole")
    report = json.loads(whole["report.json"])
    assert report["dropped"]["exact_duplicate"] >= 10 and report["chunks"] > report["kept_documents"]
    for s in Shard(0, 3).all() + (Shard(1, 3),):  # shard 1 twice: the rerun of a killed job
        run_shard(sources, tmp_path / "sharded", cfg, s, workers=1)
    merge(tmp_path / "sharded", 3)
    assert read_outputs(tmp_path / "sharded") == whole
    merge(tmp_path / "sharded", 3)  # a rerun merge (the shard files stay)
    assert read_outputs(tmp_path / "sharded") == whole
    run_shard(sources, tmp_path / "two", cfg, Shard(), workers=2)
    merge(tmp_path / "two", 1)
    assert read_outputs(tmp_path / "two") == whole
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == sorted(OUTPUTS)


def test_merge_refuses_missing_or_mismatched_shards(tmp_path):
    sources = demo_sources()[:2]
    run_shard(sources, tmp_path, PrepareConfig(), Shard(0, 2))
    with pytest.raises(ShardError, match=r"shard 1/2 has not finished \(rerun it with --shard 1/2\)"):
        merge(tmp_path, 2)
    run_shard(sources, tmp_path, PrepareConfig(min_chars=5), Shard(1, 2))
    with pytest.raises(ShardError, match="shard 1 ran with other settings or sources than shard 0"):
        merge(tmp_path, 2)


def cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "preprocessing", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_shards_and_merge_write_the_unsharded_files(tmp_path):
    rows = [{"id": "1", "text": LONG}, {"id": "2", "text": ASTHMA}, {"id": "3", "text": LONG.replace("Hyper", "Hypo")},
            {"id": "copy", "text": ASTHMA}]
    data = write_jsonl(tmp_path / "w.jsonl", rows)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"- {{name: web.en, kind: web, lang: en, path: {data.name}}}\n")
    cli("prepare", "--sources", str(sources), "--out", str(tmp_path / "one"), "--workers", "2", "--quiet")
    for i in (0, 1):
        cli("prepare", "--sources", str(sources), "--out", str(tmp_path / "two"), "--shard", f"{i}/2", "--quiet")
    summary = json.loads(cli("prepare-merge", "--out", str(tmp_path / "two"), "--shards", "2", "--quiet").stdout)
    assert summary["kept_documents"] == 2 and summary["dropped"]["exact_duplicate"] == 1
    assert summary["dropped"]["near_duplicate"] == 1
    assert read_outputs(tmp_path / "one") == read_outputs(tmp_path / "two")
    assert not list(tmp_path.glob("*/.*.partial")) and not list(tmp_path.glob("*/shards/.*.partial"))


def test_run_is_the_library_entry_point(tmp_path):
    rows = [{"id": "a", "text": LONG}]
    data = write_jsonl(tmp_path / "w.jsonl", rows)
    (tmp_path / "s.json").write_text(json.dumps([{"name": "w", "kind": "web", "lang": "auto", "path": data.name}]))
    report = run(str(tmp_path / "s.json"), str(tmp_path / "out"), PrepareConfig())
    assert report["kept_documents"] == 1
    assert lines(tmp_path / "out" / "documents.jsonl")[0]["lang"] == "en"  # detected: lang auto


@pytest.mark.parametrize("content", ["", "\n \n", "[]", "  \n\n"], ids=["empty", "blank-lines", "empty-array", "blank"])
def test_a_source_without_documents_is_an_error_naming_it_unless_allowed(tmp_path, capsys, content):
    from preprocessing import cli as pcli

    suffix = {"[]": ".json", "  \n\n": ".txt"}.get(content, ".jsonl")
    write_jsonl(tmp_path / "good.jsonl", [{"id": "1", "text": LONG}])
    (tmp_path / f"empty{suffix}").write_text(content, encoding="utf-8")
    (tmp_path / "s.yaml").write_text(f"- {{name: good, kind: web, lang: en, path: good.jsonl}}\n"
                                     f"- {{name: hollow, kind: web, lang: en, path: empty{suffix}}}\n")
    args = ["prepare", "--sources", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]
    assert pcli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: source 'hollow': {tmp_path / f'empty{suffix}'} holds no documents (an empty source is an " \
                  f"error; --allow-empty accepts it)"
    assert not (tmp_path / "out" / "documents.jsonl").exists() and not list((tmp_path / "out").glob(".*partial"))
    assert pcli.main(args + ["--allow-empty"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["read"] == {"good": 1, "hollow": 0} and report["kept_documents"] == 1
    # a shard that owns none of a non-empty source's documents is not "empty": shard 1/2 of one document
    assert pcli.main(["prepare", "--sources", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "sh"), "--quiet",
                      "--shard", "1/2", "--allow-empty"]) == 0
