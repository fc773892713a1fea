"""Regenerate the bundled demo data from the synthetic fact table in ``facts.py``.

    python demo/build_demo_data.py          # rewrites demo/corpora, demo/sft, demo/rewritten, demo/eval

Everything produced is SYNTHETIC demo text written for megatron-huatuo (CC0): simplified, not medical advice, and
only meant to exercise the pipeline. The output is deterministic (fixed seed, sorted keys) so the committed files
only change when this script or the facts change.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from facts import FACTS

HERE = Path(__file__).resolve().parent
NOTICE_EN = "[Synthetic demo text for megatron-huatuo; not medical advice.]"
NOTICE_ZH = "【megatron-huatuo 合成演示文本，非医疗建议。】"


def web_doc(i, key, en, zh, f, lang):
    if lang == "zh":
        text = (f"<p>网友提问：体检时医生说我可能有{zh}，这是怎么回事？该怎么治疗？</p>&nbsp;<br/>"
                f"医生回复：您好！{zh}常见的原因包括{f['cause'][1]}。典型表现为{f['symptoms'][1]}。"
                f"确诊一般需要{f['diagnosis'][1]}。治疗上建议{f['treatment'][1]}。"
                f"平时要注意{f['prevention'][1]}。如症状加重请及时就医。<br/> 点击查看更多健康问答 &gt;&gt;")
        return {"id": f"web-zh-{i:03d}", "url": f"https://demo.invalid/qa/zh/{key}", "title": f"{zh}怎么办", "text": text}
    text = (f"<div>Q: My doctor thinks I may have {en}. What is it and how is it treated?</div>&nbsp;"
            f"A: Thanks for asking. {en.capitalize()} is usually linked to {f['cause'][0]}. Typical features are "
            f"{f['symptoms'][0]}. A doctor confirms it with {f['diagnosis'][0]}. Treatment includes {f['treatment'][0]}. "
            f"To lower the risk, try {f['prevention'][0]}. See a doctor if things get worse. <br/>Read more answers &raquo;")
    return {"id": f"web-en-{i:03d}", "url": f"https://demo.invalid/qa/en/{key}", "title": f"About {en}", "text": text}


def literature_doc(i, key, en, zh, f, lang):
    if lang == "zh":
        abstract = (f"目的：概述{zh}的病因、诊断与治疗要点。方法：对教科书级知识进行归纳（合成演示文本）。"
                    f"结果：{zh}主要与{f['cause'][1]}有关；临床表现为{f['symptoms'][1]}；诊断依据为{f['diagnosis'][1]}；"
                    f"治疗包括{f['treatment'][1]}。结论：{f['prevention'][1]}是预防{zh}的重要措施。")
        return {"pmid": f"demo-lit-zh-{i:03d}", "title": f"{zh}诊治要点综述", "abstract": abstract}
    abstract = (f"Objective: to summarise the causes, diagnosis and treatment of {en}. Methods: a narrative summary of "
                f"textbook knowledge (synthetic demo text). Results: {en} is mainly related to {f['cause'][0]}. Patients "
                f"present with {f['symptoms'][0]}. The diagnosis rests on {f['diagnosis'][0]}. Management consists of "
                f"{f['treatment'][0]}. Conclusion: {f['prevention'][0]} are central to preventing {en}.")
    return {"pmid": f"demo-lit-en-{i:03d}", "title": f"A short review of {en}", "abstract": abstract}


def encyclopedia_doc(i, key, en, zh, f, lang):
    if lang == "zh":
        text = (f"{zh}（英文：{en}）是一种常见疾病。病因：{f['cause'][1]}。临床表现：{f['symptoms'][1]}。"
                f"诊断：{f['diagnosis'][1]}。治疗：{f['treatment'][1]}。预防：{f['prevention'][1]}。")
        return {"id": f"enc-zh-{i:03d}", "entry": zh, "content": text}
    text = (f"{en.capitalize()} is a common condition. Cause: {f['cause'][0]}. Clinical features: {f['symptoms'][0]}. "
            f"Diagnosis: {f['diagnosis'][0]}. Treatment: {f['treatment'][0]}. Prevention: {f['prevention'][0]}.")
    return {"id": f"enc-en-{i:03d}", "entry": en, "content": text}


def book_block(i, key, en, zh, f, lang):
    if lang == "zh":
        return (f"第{i + 1}章 {zh}\n第一节 病因 {zh}的发生与{f['cause'][1]}密切相关。\n"
                f"第二节 临床表现 患者常表现为{f['symptoms'][1]}。\n第三节 诊断 {f['diagnosis'][1]}是诊断的主要依据。\n"
                f"第四节 治疗与预防 治疗原则为{f['treatment'][1]}；预防方面应做到{f['prevention'][1]}。")
    return (f"Chapter {i + 1}. {en.capitalize()}\nCauses. {en.capitalize()} develops mainly because of {f['cause'][0]}.\n"
            f"Clinical picture. Patients usually report {f['symptoms'][0]}.\nDiagnosis. The key test is {f['diagnosis'][0]}.\n"
            f"Treatment and prevention. Care is based on {f['treatment'][0]}; prevention relies on {f['prevention'][0]}.")


def dialogue(i, key, en, zh, f, lang):
    if lang == "zh":
        turns = [
            f"医生您好，体检后医生说我可能有{zh}，这是怎么回事？",
            f"{zh}常见的表现有{f['symptoms'][1]}，原因包括{f['cause'][1]}。"
            f"建议到医院进行{f['diagnosis'][1]}来明确诊断。",
            "如果确诊了，应该怎么治疗？",
            f"{zh}的治疗通常包括{f['treatment'][1]}。具体方案请遵医嘱。日常生活中还要注意{f['prevention'][1]}。",
        ]
    else:
        turns = [
            f"Hello doctor, after a check-up I was told I might have {en}. What is it?",
            f"{en.capitalize()} typically causes {f['symptoms'][0]} and is linked to {f['cause'][0]}. "
            f"Please see a doctor for {f['diagnosis'][0]} to confirm it.",
            "If it is confirmed, how is it treated?",
            f"Treatment of {en} usually involves {f['treatment'][0]}; follow your doctor's plan. Day to day, "
            f"{f['prevention'][0]} help as well.",
        ]
    roles = ["human", "gpt"] * 2
    return {"id": f"sft-{lang}-{i:03d}", "conversations": [{"from": r, "value": t} for r, t in zip(roles, turns)]}


def rewritten_pair(doc_id, source, kind, en, zh, f, lang, field):
    q_zh = {"cause": f"{zh}是由什么原因引起的？", "symptoms": f"{zh}有哪些典型症状？", "diagnosis": f"如何确诊{zh}？",
            "treatment": f"{zh}应该如何治疗？", "prevention": f"怎样预防{zh}？"}
    q_en = {"cause": f"What causes {en}?", "symptoms": f"What are the typical symptoms of {en}?",
            "diagnosis": f"How is {en} diagnosed?", "treatment": f"How is {en} treated?",
            "prevention": f"How can {en} be prevented?"}
    if lang == "zh":
        q, a = q_zh[field], (f"关于这个问题：{zh}的要点是{f[field][1]}。此外，{zh}的治疗包括{f['treatment'][1]}，"
                             f"预防上应注意{f['prevention'][1]}。如有不适，请及时就医。")
    else:
        q, a = q_en[field], (f"In short: for {en}, the key point is {f[field][0]}. In addition, treatment involves "
                             f"{f['treatment'][0]}, and prevention relies on {f['prevention'][0]}. Please see a doctor "
                             f"if you feel unwell.")
    return {"question": q, "answer": a, "source": source, "kind": kind, "lang": lang, "doc_id": doc_id,
            "chunk_id": 0, "prompt_version": "demo-v1", "model": "demo-pairs (no endpoint)", "synthetic": True}


def questions(lang, rng):
    fields = ["symptoms", "treatment", "cause", "diagnosis"]
    head = {"zh": {"symptoms": "{}的典型表现是", "treatment": "{}的主要治疗是", "cause": "{}的主要病因是",
                   "diagnosis": "{}的诊断依据是"},
            "en": {"symptoms": "Which is typical of {}?", "treatment": "Which is the main treatment of {}?",
                   "cause": "What mainly causes {}?", "diagnosis": "What confirms the diagnosis of {}?"}}[lang]
    col = 1 if lang == "zh" else 0
    out = []
    for i, (key, en, zh, f) in enumerate(FACTS):
        field = fields[i % len(fields)]
        others = [g[3][field][col] for g in FACTS if g[0] != key]
        options = rng.sample(others, 3) + [f[field][col]]
        rng.shuffle(options)
        letters = "ABCD"
        answer = letters[options.index(f[field][col])]
        name = zh if lang == "zh" else en
        out.append({"id": f"demo-{lang}-{key}", "question": head[field].format(name) + ("（ ）" if lang == "zh" else ""),
                    "options": dict(zip(letters, options)), "answer": answer, "synthetic": True})
    return out


def write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20231215)
    for lang in ("zh", "en"):
        notice = NOTICE_ZH if lang == "zh" else NOTICE_EN
        web = [web_doc(i, k, en, zh, f, lang) for i, (k, en, zh, f) in enumerate(FACTS)]
        # Pipeline exercise: one exact duplicate, one near duplicate, two documents the filters should drop.
        web.append({**web[0], "id": f"web-{lang}-dup-exact"})
        near = dict(web[1], id=f"web-{lang}-dup-near")
        near["text"] = near["text"].replace("点击查看更多健康问答", "查看更多").replace("Read more answers", "More")
        web.append(near)
        web.append({"id": f"web-{lang}-junk-short", "url": "https://demo.invalid/x", "title": "", "text": "ok"})
        web.append({"id": f"web-{lang}-junk-symbols", "url": "https://demo.invalid/y", "title": "",
                    "text": "#### $$$ 1234567890 !!!! @@@@ %%%% ^^^^ &&&& **** ((((  )))) ---- ++++ ==== ~~~~ " * 3})
        for row in web:
            row["text"] = f"{notice} {row['text']}"
        write_jsonl(HERE / "corpora" / f"web.{lang}.jsonl", web)
        lit = [literature_doc(i, k, en, zh, f, lang) for i, (k, en, zh, f) in enumerate(FACTS)]
        for row in lit:
            row["abstract"] = f"{notice} {row['abstract']}"
        (HERE / "corpora" / f"literature.{lang}.json").write_text(
            json.dumps(lit, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        enc = [encyclopedia_doc(i, k, en, zh, f, lang) for i, (k, en, zh, f) in enumerate(FACTS)]
        for row in enc:
            row["content"] = f"{notice} {row['content']}"
        write_jsonl(HERE / "corpora" / f"encyclopedia.{lang}.jsonl", enc)
        blocks = [f"{notice} " + book_block(i, k, en, zh, f, lang) for i, (k, en, zh, f) in enumerate(FACTS)]
        (HERE / "corpora" / f"book.{lang}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        write_jsonl(HERE / "sft" / f"dialogues.{lang}.sharegpt.jsonl",
                    [dialogue(i, k, en, zh, f, lang) for i, (k, en, zh, f) in enumerate(FACTS)])

    pairs = []
    fields = ["cause", "symptoms", "diagnosis", "treatment", "prevention"]
    for kind, prefix in (("web", "web"), ("literature", "demo-lit"), ("encyclopedia", "enc"), ("book", "book")):
        for lang in ("zh", "en"):
            for i, (k, en, zh, f) in enumerate(FACTS):
                doc_id = f"{prefix}-{lang}-{i:03d}"
                field = fields[(i + len(kind)) % len(fields)]
                pairs.append(rewritten_pair(doc_id, f"{kind}.{lang}", kind, en, zh, f, lang, field))
    write_jsonl(HERE / "rewritten" / "pairs.jsonl", pairs)

    qs = questions("zh", rng) + questions("en", rng)
    dev_keys = {"hypertension", "diabetes"}
    write_jsonl(HERE / "eval" / "dev.jsonl", [q for q in qs if q["id"].split("-", 2)[2] in dev_keys])
    write_jsonl(HERE / "eval" / "questions.jsonl", [q for q in qs if q["id"].split("-", 2)[2] not in dev_keys])


if __name__ == "__main__":
    main()
