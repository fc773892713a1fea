"""prepare's filters and shingles, each against values computed by hand or by an independent formula here."""
from __future__ import annotations

import json
import re

import pytest

from preprocessing.prepare import REASONS, PrepareConfig, Source, merge, run_shard
from preprocessing.prepare.dedup import band_shape, shingles
from preprocessing.prepare.filters import (dup_line_fraction, dup_ngram_fraction, medical_hits, medical_score,
                                           top_ngram_fraction)
from preprocessing.prepare.text import Units, zh_share
from preprocessing.sharding import Shard

OFF = dict(min_chars=0, min_letter_ratio=0, max_dup_line_fraction=1, max_top_ngram_fraction=1,
           max_dup_ngram_fraction=1, min_lang_ratio=0, min_medical_score=0, near_dup_threshold=1)


def test_units_are_cjk_characters_and_words():
    us = Units("高血压 Patients' ＢＰ 120/80 高")
    assert us.strings() == ["高", "血", "压", "patients", "bp", "120", "80", "高"]
    assert us.ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 0] and us.chars() == 19 and "".join(us.joined()) == "高血压patientsbp12080高"


def test_repetition_measures_by_hand():
    assert dup_line_fraction("a\nb\na\na\nc") == 2 / 5
    # bigrams: (the cat) x3 = 18 characters, (cat the) x2, (cat sat) x1; all units: 21 characters
    assert top_ngram_fraction(Units("the cat the cat the cat sat"), 2) == pytest.approx(18 / 21)
    assert top_ngram_fraction(Units("every word here is new"), 2) == 0  # nothing repeats
    # 3-grams abc, bcd occur twice: they cover units 0..7 of 9 (all one character)
    assert dup_ngram_fraction(Units("a b c d a b c d e"), 3) == pytest.approx(8 / 9)
    assert dup_ngram_fraction(Units("高血压高血压"), 3) == 1.0


def test_script_share_and_medical_terms_by_hand():
    assert zh_share("患者服用 aspirin 每日") == pytest.approx(12 / 19)  # 6 CJK (double) vs 7 Latin letters
    assert medical_hits("高血压患者应控制血压。") == 3  # 高血压, 患者, 血压 (longest match: not 血压 inside 高血压)
    assert medical_score("高血压患者应控制血压。") == pytest.approx(300)  # 3 hits / 10 units
    assert medical_hits("Patients with Hypertension, and high blood-pressure.") == 3  # plural, case, hyphen
    assert medical_hits("painful") == 0  # whole words only


def test_shingles_are_word_ngrams_in_english_and_character_ngrams_in_chinese():
    cfg = PrepareConfig(shingle_words=3, shingle_chars=5)
    assert shingles(Units("The cat, the hat and the bat."), "en", cfg) == {
        "the cat the", "cat the hat", "the hat and", "hat and the", "and the bat"}
    assert shingles(Units("高血压患者，应控制"), "zh", cfg) == {"高血压患者", "血压患者应", "压患者应控", "患者应控制"}


def independent_counts(texts: list[str]) -> dict:
    """What each filter should drop, from plain formulas (lines/set, str.count, character classes)."""
    def dup_lines(t):
        ls = t.split("\n")
        return (len(ls) - len(set(ls))) / len(ls)

    def latin_share(t):
        cjk = len(re.findall(r"[\u4e00-\u9fff]", t))
        latin = len(re.findall(r"[A-Za-z]", t))
        return latin / (latin + 2 * cjk)

    return {"repeated_lines": sum(dup_lines(t) > 0.3 for t in texts),
            "wrong_language": sum(latin_share(t) < 0.5 for t in texts)}


def run_docs(tmp_path, texts, lang="en", **cfg):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    run_shard([Source("d", "web", lang, str(path))], tmp_path, PrepareConfig(**(OFF | cfg)), Shard())
    report = merge(tmp_path, 1)
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    return report, {r["id"]: r["reason"] for r in rejects}


def test_line_and_language_filters_drop_what_the_formulas_say(tmp_path):
    texts = ["Menu\nHome\nMenu\nHome\nContact us today", "Line one of a page\nLine two\nLine three\nLine one of a page",
             "A fine English paragraph about fever.\nAnother line.", "这是一段中文，讲的是发热和咳嗽的处理。",
             "Mostly English with 一点中文 words inside it.", "中文为主 with a few English words 的段落，讲高血压。"]
    report, reasons = run_docs(tmp_path, texts, max_dup_line_fraction=0.3, min_lang_ratio=0.5)
    expected = independent_counts(texts)
    assert expected == {"repeated_lines": 1, "wrong_language": 2}  # the 2nd page has 1 repeat in 4 lines: 0.25
    assert {r: report["dropped"][r] for r in expected} == expected
    assert reasons == {"0": "repeated_lines", "3": "wrong_language", "5": "wrong_language"}


def test_ngram_filters_drop_spam_and_keep_prose(tmp_path):
    spam = "buy cheap pills now " * 10
    slogan = "Visit our clinic today for the best prices on every treatment we offer"
    chant = (f"Our staff answers questions by phone from Monday to Friday. {slogan}. Parking is free behind the "
             f"building and the entrance has a ramp. {slogan}.")
    prose = ("Hypertension is a common condition in which blood pressure stays high. It is linked to salt intake, "
             "obesity and lack of exercise.")
    report, reasons = run_docs(tmp_path, [spam, chant, prose], max_top_ngram_fraction=0.2, max_dup_ngram_fraction=0.3)
    # spam: its top bigram "cheap pills" covers 10 of the 16 characters of each repeat; the chant repeats a slogan
    assert top_ngram_fraction(Units(spam), 2) == pytest.approx(10 / 16)
    slogan_chars = len(re.sub(r"\W", "", slogan))
    assert dup_ngram_fraction(Units(chant), 6) == pytest.approx(2 * slogan_chars / len(re.sub(r"\W", "", chant)))
    assert reasons == {"0": "top_ngram", "1": "repeated_ngrams"}
    assert report["kept_documents"] == 1


def test_medical_filter_counts(tmp_path):
    texts = ["The patient had fever, cough and a rash; the doctor prescribed an antibiotic.",
             "The match ended two to one after extra time in the rain.",
             "患者出现发热和咳嗽，医生建议口服抗生素。", "今天下雨，比赛在加时赛后结束。"]
    report, reasons = run_docs(tmp_path, texts, lang="auto", min_medical_score=50)
    assert reasons == {"1": "not_medical", "3": "not_medical"}
    assert report["dropped"] == dict.fromkeys(REASONS, 0) | {"not_medical": 2}


def test_lsh_bands_reach_99_percent_recall_at_the_threshold():
    # 0.85: 8 rows -> 1 - (1 - 0.85^8)^16 = 0.9938; 9 rows -> 1 - (1 - 0.85^9)^14 = 0.975 (too low)
    assert band_shape(0.85, 128) == (16, 8)
    assert band_shape(0.5, 128) == (42, 3)  # 1 - (1 - 0.5^3)^42 = 0.9963; 4 rows: 0.873


def test_bundled_term_lists_are_package_data_of_the_promised_size():
    from preprocessing.prepare.filters import _load_terms

    for name, script in (("medical_terms_zh.txt", r"[\u4e00-\u9fff]+"), ("medical_terms_en.txt", r"[a-z0-9 \-]+")):
        terms = _load_terms(name)
        assert 200 <= len(terms) <= 400 and len(set(terms)) == len(terms)
        assert all(re.fullmatch(script, t) for t in terms), name
