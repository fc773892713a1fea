"""prepare: readers, cleaning, filters, exact and near dedup, chunking, encodings, errors, rerun identity.

References are hand-written expectations and the demo data's own design (demo/README.md: each web file holds one
exact duplicate, one near duplicate, one too-short and one symbol-only document, with ids saying so).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from huatuo_testing import REPO_ROOT, shared_file
from preprocessing.prepare import InputError, PrepareConfig, Source, chunk, clean, decode, prepare, read_source, run

LONG = ("Hypertension is a common condition in which blood pressure stays high. It is linked to salt intake, "
        "obesity, lack of exercise and family history. Treatment includes salt reduction and drugs such as ACE "
        "inhibitors or calcium channel blockers, chosen by a doctor after repeated measurements.")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clean_removes_html_entities_control_chars_and_extra_space():
    assert clean("<div>Q: what&nbsp;is  it?</div>\x07\n\n  A:\tnothing  ") == "Q: what is it?\nA: nothing"


def test_filters_and_dedup_on_hand_made_documents(tmp_path):
    near = LONG.replace("common", "frequent")
    rows = [{"id": "a", "text": LONG}, {"id": "b", "text": "<p>" + LONG + "</p>"}, {"id": "c", "text": near},
            {"id": "d", "text": "too short"}, {"id": "e", "text": "#### $$$$ %%%% " * 20},
            {"id": "f", "text": LONG.replace("Hypertension", "Diabetes").replace("blood pressure", "blood sugar")
             .replace("salt", "sugar").replace("ACE inhibitors or calcium channel blockers", "metformin or insulin")}]
    src = Source("web.en", "web", "en", str(write_jsonl(tmp_path / "w.jsonl", rows)))
    docs, report = prepare([src], PrepareConfig())
    assert [d.id for d in docs] == ["a", "f"]
    assert report.dropped == {"too_short": ["d"], "few_letters": ["e"], "exact_duplicate": ["b"],
                              "near_duplicate": ["c"]}


def test_demo_corpora_drop_exactly_the_planted_documents():
    sources = [Source(n, k, lang, str(REPO_ROOT / "demo" / rel), t, i) for n, k, lang, rel, t, i in
               __import__("megatron_huatuo.demo.pipeline", fromlist=["DEMO_SOURCES"]).DEMO_SOURCES]
    docs, report = prepare(sources, PrepareConfig())
    expected = {kind: sorted(f"web-{lang}-{suffix}" for lang in ("en", "zh"))
                for kind, suffix in (("exact_duplicate", "dup-exact"), ("near_duplicate", "dup-near"),
                                     ("too_short", "junk-short"), ("few_letters", "junk-symbols"))}
    assert {k: sorted(v) for k, v in report.dropped.items()} == expected
    assert len(docs) == 8 * 24


def test_gb18030_text_is_decoded(tmp_path):
    text = "高血压患者能吃党参吗？\n\n糖尿病的典型症状是多饮、多食、多尿和体重下降。"
    path = tmp_path / "qa.txt"
    path.write_bytes(text.encode("gb18030"))
    docs = list(read_source(Source("qa.zh", "web", "zh", str(path))))
    assert [d.text for d in docs] == text.split("\n\n")
    assert [d.id for d in docs] == ["qa-zh-000", "qa-zh-001"]


def test_real_gb18030_doctor_qa_decodes():
    path = shared_file("corpora/zh/internal_medicine_qa.gb18030.txt")
    text = decode(path)
    assert "高血压" in text and "\ufffd" not in text


def test_bad_input_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        list(read_source(Source("s", "web", "en", str(path))))
    write_jsonl(path, [{"id": "a", "body": "x"}])
    with pytest.raises(InputError, match=r"bad\.jsonl: line 1: missing field 'text'"):
        list(read_source(Source("s", "web", "en", str(path))))
    path.write_bytes(b"\xff\xfe\xfa\x00\x81")
    with pytest.raises(InputError, match="neither UTF-8"):
        decode(path)


def test_chunking_splits_long_documents_at_sentence_ends():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = chunk(text, 200)
    assert all(len(p) <= 200 for p in pieces) and len(pieces) > 1
    assert all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text


def test_cli_rerun_writes_identical_files(tmp_path):
    rows = [{"id": str(i), "text": LONG.replace("common", f"common ({i} {i * 7919})")} for i in range(3)]
    data = write_jsonl(tmp_path / "w.jsonl", rows)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"- {{name: web.en, kind: web, lang: en, path: {data.name}}}\n")
    outs = []
    for name in ("one", "two"):
        proc = subprocess.run([sys.executable, "-m", "preprocessing", "prepare", "--sources", str(sources),
                               "--out", str(tmp_path / name)], capture_output=True, text=True, cwd=REPO_ROOT)
        assert proc.returncode == 0, proc.stderr
        outs.append({f: (tmp_path / name / f).read_bytes() for f in ("documents.jsonl", "report.json")})
    assert outs[0] == outs[1]
    assert not list((tmp_path / "one").glob("*.tmp"))
