"""rewrite against the local fake OpenAI server (tests/preprocessing/fake_openai.py): injected faults lose and
duplicate nothing, the budget holds, every reject has its reason, shards merge to the unsharded bytes, the key never
appears in logs or outputs. Expected counts, orders and reasons are written out by hand from the documents' markers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from fake_openai import FakeOpenAI, Faults
from huatuo_testing import REPO_ROOT
from preprocessing import cli
from preprocessing.rewrite import API_KEY_ENVS, BudgetExhausted, JobIncomplete, RewriteConfig, load_prompts, request_key, rewrite_file
from preprocessing.rewrite.cache import Cache, CachedReply
from preprocessing.rewrite.checks import check_output
from preprocessing.rewrite.client import backoff_delay, retry_after_seconds
from preprocessing.rewrite.prompts import render
from preprocessing.sharding import Shard

SECRET = "sk-test-NEVER-LOG-ME-4242"


def write_docs(path, n=24, markers=None):
    """n documents alternating en/zh, each text distinct; ``markers`` = {ordinal: marker} planted in the text."""
    markers = markers or {}
    rows = []
    for i in range(n):
        zh = i % 2 == 1
        body = (f"第{i}种疾病需要休息和补液，并按医嘱服药。" * 4) if zh else \
            (f"Condition number {i} is treated with rest and fluids. " * 3)
        rows.append({"id": f"doc-{i}", "source": "web.zh" if zh else "web.en", "kind": "web",
                     "lang": "zh" if zh else "en", "chunk_id": 0, "text": markers.get(i, "") + body})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def config(url, **kw):
    base = dict(base_url=url, model="fake-model", backoff=0.01, max_backoff=0.05, timeout=1.0, concurrency=16)
    base.update(kw)
    return RewriteConfig(**base)


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    for name in API_KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


def test_faults_lose_nothing_duplicate_nothing_and_match_a_fault_free_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the fallback variable
    docs = write_docs(tmp_path / "documents.jsonl", n=40)
    faults = Faults(rate=0.6, per_prompt=2, retry_after="0.02", timeout_sleep=1.3)  # past the 1 s timeout
    with FakeOpenAI(faults=faults) as faulty:
        summary = rewrite_file(docs, tmp_path / "faulty", config(faulty.url))
    with FakeOpenAI() as clean:
        rewrite_file(docs, tmp_path / "clean", config(clean.url))
    assert set(faulty.faulted) == {"429", "500", "timeout", "malformed", "drop"}
    assert faulty.authorization == {f"Bearer {SECRET}"}
    for name in ("pairs.jsonl", "rejects.jsonl"):
        assert (tmp_path / "faulty" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    pairs = lines(tmp_path / "faulty" / "pairs.jsonl")
    # 40 documents, 2 requests each, no marker: 40 pairs in input order, each request answered exactly once
    assert [p["doc_id"] for p in pairs] == [f"doc-{i}" for i in range(40)]
    assert [p["lang"] for p in pairs] == ["en", "zh"] * 20
    assert len(faulty.served) == 80 and set(faulty.served.values()) == {1}
    assert summary["counts"]["requests"]["sent"] == 80 and sum(summary["counts"]["requests"]["retries"].values()) \
        == sum(faulty.faulted.values())
    assert pairs[1]["prompt_version"] == "rewrite_v1" and pairs[1]["model"] == "fake-model"
    assert pairs[1]["answer"].startswith("关于") and pairs[0]["answer"].startswith("On '")  # zh doc -> zh prompts


def test_retry_after_is_honoured_and_backoff_is_jittered():
    cfg = RewriteConfig(base_url="x", backoff=1.0, max_backoff=8.0)
    import random

    rng = random.Random(0)
    delays = [backoff_delay(3, cfg, None, rng) for _ in range(200)]
    assert 4.0 <= min(delays) and max(delays) <= 8.0 and len(set(delays)) > 100  # [d/2, d] with d = min(8, 2**3)
    assert backoff_delay(0, cfg, 30.0, rng) == 30.0
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("Wed, 02 Dec 2026 16:00:10 GMT", now=1796227200.0) == 10.0  # 16:00:00 UTC
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_429_waits_for_its_retry_after(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=1)
    with FakeOpenAI(faults=Faults(rate=1.0, kinds=("429",), per_prompt=1, retry_after="0.3")) as srv:
        start = time.monotonic()
        rewrite_file(docs, tmp_path / "out", config(srv.url, backoff=0.001))
        elapsed = time.monotonic() - start
    assert srv.faulted["429"] == 2 and elapsed >= 0.6  # question, then answer: each waited 0.3 s once


def test_budget_holds_then_a_rerun_pays_only_the_rest(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=10)
    with FakeOpenAI() as srv:
        with pytest.raises(BudgetExhausted, match="rerun"):
            rewrite_file(docs, tmp_path / "out", config(srv.url, max_requests=7, concurrency=4))
        assert sum(srv.served.values()) == 7
        assert not (tmp_path / "out" / "pairs.jsonl").exists()
        assert not list((tmp_path / "out").glob(".*partial"))
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url, concurrency=4))
        assert summary["counts"]["requests"]["cached"] == 7 and summary["counts"]["requests"]["sent"] == 13
        assert set(srv.served.values()) == {1} and len(srv.served) == 20
    with FakeOpenAI() as straight:
        rewrite_file(docs, tmp_path / "straight", config(straight.url))
    assert (tmp_path / "out" / "pairs.jsonl").read_bytes() == (tmp_path / "straight" / "pairs.jsonl").read_bytes()


def test_every_reject_is_kept_with_its_reason(tmp_path):
    markers = {0: "[[long-question]]", 1: "[[long-question]]", 2: "[[empty-question]]", 3: "[[refuse]]",
               4: "[[refuse-even-seed]]", 5: "[[wrong-lang]]", 6: "[[wrong-lang]]", 7: "[[mention-ref]]",
               8: "[[mention-ref]]", 9: "[[http400]]"}
    docs = write_docs(tmp_path / "documents.jsonl", n=12, markers=markers)
    with FakeOpenAI() as srv:
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url))
    rejects = {r["ordinal"]: (r["step"], r["reason"], r["tries"]) for r in lines(tmp_path / "out" / "rejects.jsonl")}
    assert rejects == {
        0: ("question", "question_too_long", ["question_too_long"] * 2),
        1: ("question", "question_too_long", ["question_too_long"] * 2),
        2: ("question", "empty", ["empty"] * 2),
        3: ("question", "refusal", ["refusal"] * 2),
        5: ("answer", "wrong_language", ["wrong_language"] * 2),
        6: ("answer", "wrong_language", ["wrong_language"] * 2),
        7: ("answer", "mentions_reference", ["mentions_reference"] * 2),
        8: ("answer", "mentions_reference", ["mentions_reference"] * 2),
        9: ("question", "request_rejected", []),
    }
    assert [p["ordinal"] for p in lines(tmp_path / "out" / "pairs.jsonl")] == [4, 10, 11]
    assert summary["counts"]["rejects"] == {"answer:mentions_reference": 2, "answer:wrong_language": 2,
                                            "question:empty": 1, "question:question_too_long": 2,
                                            "question:refusal": 1, "question:request_rejected": 1}
    # a 2nd try is a distinct request (seed 0, then seed 1), as the original's 2 tries. Seed 0: 12 questions and
    # the answers of docs 4-8, 10, 11 (7); seed 1: the questions of docs 0-4 (5) and the answers of docs 4-8 (5).
    assert Counter(b["seed"] for b in srv.bodies_seen) == {0: 19, 1: 10}


def test_output_checks_on_hand_written_outputs():
    def check(step, text, lang):
        return check_output(step, text, lang, max_question_chars=180, min_script_ratio=0.5)

    assert check("question", "高" * 180, "zh") is None and check("question", "高" * 181, "zh") == "question_too_long"
    assert check("answer", "", "zh") == "empty"
    assert check("answer", "做MRI和CT检查之前需要空腹吗？一般不需要。", "zh") is None  # abbreviations are fine
    assert check("answer", "You should rest and drink water.", "zh") == "wrong_language"
    assert check("answer", "I cannot give medical advice.", "en") == "refusal"
    assert check("answer", "作为一个AI助手，我不能诊断。", "zh") == "refusal"
    assert check("answer", "Rest first. " * 10 + "If you feel worse, I cannot stress enough: see a doctor.", "en") \
        is None  # not an opening refusal
    assert check("answer", "The textbook answer is rest.", "en") is None
    assert check("answer", "According to the text, rest.", "en") == "mentions_reference"
    assert check("answer", "可参考以下建议：多休息。", "zh") == "mentions_reference"


def test_prompts_are_versioned_files_and_the_cache_key_covers_what_changes_a_reply():
    prompts = load_prompts("rewrite_v1")
    assert prompts.languages == ("en", "zh")
    assert "用中文" in prompts.template("answer", "zh") and "in English" in prompts.template("answer", "en")
    text = "剂量 {question} 与 {text} 字样"
    rendered = render(prompts.template("answer", "zh"), text=text, question="Q?")
    assert text in rendered and rendered.rstrip().endswith("问题：Q?")
    base = dict(prompt_version="rewrite_v1", model="m", sampling={"temperature": 0.7, "seed": 0}, step="answer",
                messages=[{"role": "user", "content": rendered}])
    k = request_key(**base)
    for change in ({"prompt_version": "rewrite_v2"}, {"model": "m2"}, {"sampling": {"temperature": 0.7, "seed": 1}},
                   {"sampling": {"temperature": 0.2, "seed": 0}},
                   {"messages": [{"role": "user", "content": rendered + "x"}]}):
        assert request_key(**{**base, **change}) != k
    assert request_key(**base) == k


def test_shards_merged_equal_the_unsharded_run_byte_for_byte(tmp_path, capsys):
    docs = write_docs(tmp_path / "documents.jsonl", n=17, markers={2: "[[refuse]]", 9: "[[mention-ref]]"})
    kw = dict(price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
    with FakeOpenAI() as srv:
        whole = rewrite_file(docs, tmp_path / "whole", config(srv.url, **kw))
    with FakeOpenAI() as srv2:
        for i in (2, 0):
            rewrite_file(docs, tmp_path / "sharded", config(srv2.url, **kw), shard=Shard(i, 3))
        assert cli.main(["rewrite-merge", "--out", str(tmp_path / "sharded"), "--shards", "3"]) == 2
        assert "summary.shard-00001-of-00003.json is missing" in capsys.readouterr().err
        rewrite_file(docs, tmp_path / "sharded", config(srv2.url, **kw), shard=Shard(1, 3))
    shard_pairs = lines(tmp_path / "sharded" / "shards" / "pairs.shard-00001-of-00003.jsonl")
    assert [p["ordinal"] for p in shard_pairs] == [1, 4, 7, 10, 13, 16]
    assert cli.main(["rewrite-merge", "--out", str(tmp_path / "sharded"), "--shards", "3"]) == 0
    for name in ("pairs.jsonl", "rejects.jsonl", "summary.json"):
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # usage: the fake server reports prompt/completion tokens = characters; the summary adds them up
    pairs = lines(tmp_path / "whole" / "pairs.jsonl")
    completion = sum(len(p["question"]) + len(p["answer"]) for p in pairs)
    tok = whole["counts"]["tokens"]
    # rejected docs: #2 two refused questions, #9 one question and two answers mentioning the reference
    assert tok["completion"] == completion + 2 * len("I'm sorry, but I cannot help with that.") + \
        len(lines(tmp_path / "whole" / "rejects.jsonl")[1]["question"]) + 2 * len("根据参考资料，应当多休息。")
    assert whole["cost_estimate"]["all_replies"] == round(tok["prompt"] / 1000 * 0.5 + tok["completion"] / 1000 * 2, 6)
    assert tok == {"prompt": srv.usage["prompt"], "completion": srv.usage["completion"]}  # what the server billed
    assert whole["counts"]["sent_tokens"] == tok


def test_the_key_comes_from_the_environment_and_never_reaches_logs_or_outputs(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=6, markers={3: "[[http400]]"})
    env = {**os.environ, "HUATUO_REWRITE_API_KEY": SECRET}
    with FakeOpenAI(faults=Faults(rate=0.7, kinds=("429", "500", "malformed", "drop"))) as srv:
        proc = subprocess.run([sys.executable, "-m", "preprocessing", "rewrite", "--docs", str(docs), "--out",
                               str(tmp_path / "out"), "--base-url", srv.url, "--model", "fake-model",
                               "--backoff", "0.01", "--log-level", "DEBUG"],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert srv.authorization == {f"Bearer {SECRET}"}
    assert "retry" in proc.stderr  # the faults were logged ...
    assert SECRET not in proc.stdout + proc.stderr  # ... without the key
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(encoding="utf-8"), path
    assert json.loads(proc.stdout)["counts"]["rejects"] == {"question:request_rejected": 1}


def test_cli_reports_bad_documents_with_file_and_line(tmp_path):
    bad = tmp_path / "documents.jsonl"
    bad.write_text('{"id": "a", "text": "x", "kind": "web", "lang": "en", "source": "s"}\n{"id": "b"}\n')
    proc = subprocess.run([sys.executable, "-m", "preprocessing", "rewrite", "--docs", str(bad), "--out",
                           str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "documents.jsonl:2: missing field(s)" in proc.stderr
    bad.write_text('{"id": "a", "text": "x", "kind": "web", "lang": "fr", "source": "s"}\n')
    proc = subprocess.run([sys.executable, "-m", "preprocessing", "rewrite", "--docs", str(bad), "--out",
                           str(tmp_path / "o"), "--base-url", "http://127.0.0.1:9"], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2 and "documents.jsonl:1: no rewrite_v1 prompts for target language 'fr'" in proc.stderr


def test_a_server_failing_past_every_retry_stops_the_job_without_output_and_a_rerun_finishes(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=4)
    with FakeOpenAI(faults=Faults(rate=1.0, kinds=("500",), per_prompt=3)) as srv:
        with pytest.raises(JobIncomplete, match="still failing after 3 attempts"):
            rewrite_file(docs, tmp_path / "out", config(srv.url, retries=2))
        assert not (tmp_path / "out" / "pairs.jsonl").exists() and not srv.served
        # rerun: each question succeeds at once (its 4th receipt), each answer at its 4th attempt
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url, retries=3))
    assert summary["counts"]["pairs"] == 4 and set(srv.served.values()) == {1}


def test_the_cache_keeps_the_first_reply_and_identical_documents_pay_once(tmp_path):
    cache = Cache(tmp_path / "cache")
    first, second = CachedReply("first", 1, 2), CachedReply("second", 3, 4)
    assert cache.put("ab" + "0" * 62, first) == first
    assert cache.put("ab" + "0" * 62, second) == first  # e.g. another shard answered the same request later
    assert cache.get("ab" + "0" * 62) == first and cache.get("cd" + "0" * 62) is None
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    docs = tmp_path / "documents.jsonl"
    row = {"id": "a", "source": "s", "kind": "web", "lang": "en", "text": "Rest and fluids help a cold. " * 5}
    docs.write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in ("a", "b", "c")))
    with FakeOpenAI(latency=0.05) as srv:
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url))
    assert set(srv.served.values()) == {1} and len(srv.served) == 2  # one question, one answer for all three
    assert summary["counts"]["requests"]["sent"] == 2 and summary["counts"]["pairs"] == 3
    answers = {p["answer"] for p in lines(tmp_path / "out" / "pairs.jsonl")}
    assert len(answers) == 1
