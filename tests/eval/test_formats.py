"""Every benchmark format as published, written by the tests in its exact shape (invented questions, no benchmark
data): detected per file, mapped onto one schema, and every failure one line naming the file, line and field."""
from __future__ import annotations

import json

import pytest

from megatron_huatuo.eval.questions import QuestionFormatError, file_format, load_questions
from tests.eval.conftest import write_jsonl

# The unified JSONL of HuatuoGPT-II's successors: 'option' as "(A) ..." lines, the answer key spelled 'anwer',
# answers written "(A)" / "(ACD)", PubMedQA rows with their 'context'.
UNIFIED = [
    {"question": "哪种维生素缺乏导致坏血病？", "option": "(A) 维生素C.\n(B) 维生素D.\n(C) 维生素K.\n(D) 维生素A.",
     "anwer": "(A)", "source": "cmexam"},
    {"question": "下列哪些属于症状？", "option": "(A) 发热.\n(B) 石头.\n(C) 咳嗽.\n(D) 乏力.\n(E) 桌子.",
     "anwer": "(ACD)", "source": "cmexam"},
    {"question": "Does daily walking lower resting heart rate?", "context": "We followed 40 adults for a year.",
     "option": "(A) Yes.\n(B) No.\n(C) Maybe.", "answer": "(B)", "source": "pubmedqa"},    # an option text with a newline inside (MedQA's own data) continues on a line without a letter
    {"question": "Which is most likely?", "option": "(A) Sepsis.\n(B) Ethanol intoxication\n\".", "anwer": "(B)",
     "source": "medqa-usmle"},
]


def test_unified_successor_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "cmexam.jsonl", UNIFIED)
    qs = load_questions(path)
    assert file_format(path) == "unified"
    assert [q.answer for q in qs] == ["A", "ACD", "B", "B"]
    assert qs[3].options == {"A": "Sepsis.", "B": 'Ethanol intoxication\n".'}
    assert qs[0].options == {"A": "维生素C.", "B": "维生素D.", "C": "维生素K.", "D": "维生素A."}
    assert qs[1].is_multi and list(qs[1].options) == list("ABCDE")
    assert qs[2].context == "We followed 40 adults for a year." and qs[2].meta["source"] == "pubmedqa"
    assert qs[0].qid == "cmexam-1" and qs[2].qid == "cmexam-3"


def test_medqa_us_and_mainland(tmp_path):
    us = {"question": "A 30-year-old man has a cough. Which drug?", "answer": "Amoxicillin",
          "options": {"A": "Insulin", "B": "Amoxicillin", "C": "Heparin", "D": "Aspirin", "E": "Metformin"},
          "meta_info": "step2&3", "answer_idx": "B", "metamap_phrases": ["man", "cough"]}
    mainland = {"question": "高血压首选的生活方式干预是", "answer": "限盐",
                "options": {"A": "熬夜", "B": "饮酒", "C": "限盐", "D": "吸烟"}, "meta_info": "卫生法规",
                "answer_idx": "C"}
    qs = load_questions(write_jsonl(tmp_path / "US_test.jsonl", [us])) + \
        load_questions(write_jsonl(tmp_path / "Mainland_test.jsonl", [mainland]))
    assert [(q.answer, q.meta["meta_info"]) for q in qs] == [("B", "step2&3"), ("C", "卫生法规")]
    assert len(qs[0].options) == 5


def test_medmcqa_original_and_hf_copy(tmp_path):
    row = {"question": "Drug of choice for scurvy?", "exp": "...", "opa": "Vitamin C", "opb": "Iron",
           "opc": "Zinc", "opd": "Folate", "subject_name": "Pharmacology", "topic_name": None,
           "id": "7c2f", "choice_type": "single"}
    orig = load_questions(write_jsonl(tmp_path / "dev.json", [dict(row, cop=1), dict(row, cop=4, id="x2")]))
    assert [q.answer for q in orig] == ["A", "D"] and orig[0].qid == "7c2f"
    assert orig[0].meta == {"subject_name": "Pharmacology", "choice_type": "single"}
    hf = load_questions(write_jsonl(tmp_path / "hf.jsonl", [dict(row, cop=0), dict(row, cop=3)]))
    assert [q.answer for q in hf] == ["A", "D"]


def test_pubmedqa_original_keyed_by_pmid_and_hf_rows(tmp_path):
    record = {"QUESTION": "Is coffee linked to insomnia?", "CONTEXTS": ["Background sentence.", "Methods sentence."],
              "LABELS": ["BACKGROUND", "METHODS"], "MESHES": ["Coffee"], "YEAR": "2001",
              "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": "maybe",
              "LONG_ANSWER": "Perhaps."}
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({"12345": record, "67890": dict(record, final_decision="no")}), encoding="utf-8")
    qs = load_questions(path)
    assert file_format(path) == "pubmedqa"
    assert [(q.qid, q.answer) for q in qs] == [("12345", "C"), ("67890", "B")]
    assert qs[0].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert qs[0].context == "Background sentence.\nMethods sentence."  # never dropped
    hf = {"pubid": 5, "question": "Is tea linked to sleep?", "context": {"contexts": ["One.", "Two."],
          "labels": ["A", "B"], "meshes": []}, "long_answer": "No.", "final_decision": "yes"}
    q = load_questions(write_jsonl(tmp_path / "pqa.jsonl", [hf]))[0]
    assert (q.qid, q.answer, q.context) == ("5", "A", "One.\nTwo.")


def test_mmlu_headerless_csv_and_hf_rows(tmp_path):
    csv_path = tmp_path / "anatomy_test.csv"
    csv_path.write_text('Which bone is in the arm?,Femur,Humerus,Tibia,Fibula,B\n"Heart, chambers?",2,3,4,5,C\n',
                        encoding="utf-8")
    qs = load_questions(csv_path)
    assert file_format(csv_path) == "mmlu"
    assert [(q.qid, q.answer, q.meta["subject"]) for q in qs] == [("anatomy_test-1", "B", "anatomy"),
                                                                 ("anatomy_test-2", "C", "anatomy")]
    assert qs[1].question == "Heart, chambers?"
    hf = load_questions(write_jsonl(tmp_path / "mmlu.jsonl", [
        {"question": "q", "subject": "college_medicine", "choices": ["p", "q", "r", "s"], "answer": 2}]))
    assert hf[0].answer == "C" and hf[0].meta["subject"] == "college_medicine"


def test_cmmlu_and_cmexam_csv(tmp_path):
    cmmlu = tmp_path / "anatomy.csv"
    cmmlu.write_text("\ufeff,Question,A,B,C,D,Answer\n0,心脏有几个腔？,2,3,4,5,C\n1,\"含逗号, 的题\",a,b,c,d,A\n",
                     encoding="utf-8")
    qs = load_questions(cmmlu)
    assert file_format(cmmlu) == "cmmlu"
    assert [(q.qid, q.answer) for q in qs] == [("anatomy-1", "C"), ("anatomy-2", "A")]
    cmexam = tmp_path / "test.csv"
    cmexam.write_text('Question,Options,Answer,Explanation,Disease Group,Clinical Department,Medical Discipline,'
                      'Competency,Difficulty level\n'
                      '哪些是症状,"A 发热\nB 石头\nC 咳嗽",AC,发热和咳嗽是症状,,内科,临床医学,诊断,2\n',
                      encoding="utf-8")
    q = load_questions(cmexam)[0]
    assert file_format(cmexam) == "cmexam"
    assert q.options == {"A": "发热", "B": "石头", "C": "咳嗽"} and q.answer == "AC" and q.is_multi
    assert q.meta["Clinical Department"] == "内科"


def test_cmb_array_and_huatuo_eval_grouped_file(tmp_path):
    cmb = [{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "口腔执业医师",
            "question": "龋病的主要致病菌是", "answer": "B", "question_type": "单项选择题",
            "option": {"A": "大肠杆菌", "B": "变形链球菌", "C": "金黄色葡萄球菌", "D": "白色念珠菌", "E": ""}},
           {"exam_type": "护理考试", "exam_class": "主管护师", "exam_subject": "内科护理", "question": "哪些属于症状",
            "answer": "AC", "question_type": "多项选择题", "option": {"A": "发热", "B": "石头", "C": "咳嗽"}}]
    path = tmp_path / "CMB-val-merge.json"
    path.write_text(json.dumps(cmb, ensure_ascii=False, indent=4), encoding="utf-8")
    qs = load_questions(path)
    assert file_format(path) == "cmb"
    assert list(qs[0].options) == ["A", "B", "C", "D"]  # the empty option E is dropped
    assert [q.answer for q in qs] == ["B", "AC"] and qs[1].meta["question_type"] == "多项选择题"
    grouped = tmp_path / "eval_qa.json"
    grouped.write_text(json.dumps({"CMB_val": cmb[:1], "CMExam_val": cmb[1:]}, ensure_ascii=False), encoding="utf-8")
    qs = load_questions(grouped)
    assert [(q.qid, q.meta["source"]) for q in qs] == [("CMB_val-1", "CMB_val"), ("CMExam_val-1", "CMExam_val")]


def test_generic_rows(tmp_path):
    qs = load_questions(write_jsonl(tmp_path / "ours.jsonl", [
        {"id": "own-1", "question": "ours", "options": ["u", "v"], "answer": "b"},
        {"question": "dict", "options": {"A": "x", "B": "y"}, "answer": "A, B"}]))
    assert [(q.qid, q.answer) for q in qs] == [("own-1", "B"), ("ours-2", "AB")]


@pytest.mark.parametrize(
    "rows, message",
    [
        # the unified format's own keys are named, not another format's ('Options')
        ([UNIFIED[0], dict(UNIFIED[0], option="A) x\n(B) y")], r"cmexam.jsonl:2: field 'option': cannot read an "
                                                              r"option letter in line 'A\) x'"),
        ([UNIFIED[0], {k: v for k, v in UNIFIED[0].items() if k != "anwer"}],
         r"cmexam.jsonl:2: field 'anwer': missing \(looked for 'anwer', 'answer'\)"),
        ([UNIFIED[0], dict(UNIFIED[0], anwer="(F)")], r"cmexam.jsonl:2: field 'anwer': answer '\(F\)' is not"),
        ([UNIFIED[0], dict(UNIFIED[0], question="")], r"cmexam.jsonl:2: field 'question': empty text"),
    ],
)
def test_unified_errors_name_file_line_field(tmp_path, rows, message):
    with pytest.raises(QuestionFormatError, match=message):
        load_questions(write_jsonl(tmp_path / "cmexam.jsonl", rows))


def test_other_format_errors(tmp_path):
    base = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2}
    with pytest.raises(QuestionFormatError, match=r"m.jsonl:2: field 'cop': missing \(the MedMCQA test split"):
        load_questions(write_jsonl(tmp_path / "m.jsonl", [base, {k: v for k, v in base.items() if k != "cop"}]))
    with pytest.raises(QuestionFormatError, match=r"m.jsonl:1: field 'opc': missing or empty"):
        load_questions(write_jsonl(tmp_path / "m.jsonl", [dict(base, opc="")]))
    cmb = {"question": "q", "option": {"A": "x", "B": "y"}, "answer": "", "question_type": "单项选择题"}
    with pytest.raises(QuestionFormatError, match=r"c.json:1: field 'answer': empty \(CMB's test questions"):
        (tmp_path / "c.json").write_text(json.dumps([cmb]), encoding="utf-8")
        load_questions(tmp_path / "c.json")
    pq = {"1": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}}
    (tmp_path / "p.json").write_text(json.dumps(pq), encoding="utf-8")
    with pytest.raises(QuestionFormatError, match=r"p.json:1: field 'final_decision': expected yes, no or maybe"):
        load_questions(tmp_path / "p.json")
    (tmp_path / "x.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(QuestionFormatError, match=r"x.csv:1: field 'Answer': answer 'E' is not"):
        load_questions(tmp_path / "x.csv")
    with pytest.raises(QuestionFormatError, match=r"u.jsonl:1: unknown benchmark format"):
        load_questions(write_jsonl(tmp_path / "u.jsonl", [{"stem": "q"}]))
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "options": ["a", "b"], "answer": "A"}\n{not json\n')
    with pytest.raises(QuestionFormatError, match="broken.jsonl:2: invalid JSON"):
        load_questions(tmp_path / "broken.jsonl")
