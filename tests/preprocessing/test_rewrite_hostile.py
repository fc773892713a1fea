"""rewrite against a hostile or broken endpoint (issue 10), one test per case, each against the fake server
(tests/preprocessing/fake_openai.py): a reply that trickles one byte at a time ends at ``timeout``, a huge reply is
cut at ``max_response_bytes`` and never cached, replies faking chat turns become rejects with their reason, and a
run in which every document failed exits non-zero with a summary. Expectations are written out by hand."""
from __future__ import annotations

import json
import time

import pytest

from fake_openai import FakeOpenAI
from preprocessing import cli
from preprocessing.rewrite import JobIncomplete, RewriteError, TooManyFailures, rewrite_file
from preprocessing.rewrite.checks import ROLE_MARKER, TEMPLATE_MARKER, chat_markup
from test_rewrite import config, lines, no_key_in_env, write_docs  # noqa: F401  (the fixture is autouse)


def test_a_reply_trickling_one_byte_at_a_time_ends_at_the_timeout(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=1, markers={0: "[[slow-drip]]"})
    # each byte comes 0.05 s after the last (no single read ever waits long); the whole reply would take ~13 s
    with FakeOpenAI(drip_interval=0.05) as srv:
        start = time.monotonic()
        with pytest.raises(JobIncomplete, match=r"still failing after 2 attempts \(timeout\)"):
            rewrite_file(docs, tmp_path / "out", config(srv.url, timeout=0.5, retries=1))
        elapsed = time.monotonic() - start
    assert sum(srv.received.values()) == 2  # the question, tried twice, 0.5 s each
    assert 1.0 <= elapsed < 4.0, elapsed
    assert not (tmp_path / "out" / "pairs.jsonl").exists() and not list((tmp_path / "out").rglob("*.json"))


def test_a_huge_reply_is_cut_at_the_byte_cap_and_never_cached(tmp_path):
    docs = write_docs(tmp_path / "documents.jsonl", n=2, markers={0: "[[huge-reply]]"})
    with FakeOpenAI(huge_bytes=600 << 20) as srv:  # 600 MB of content, chunked: no size announced
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url, max_response_bytes=256 << 10))
    # the client hung up after its 256 KB: what the server got out is that plus what the sockets buffered
    assert srv.huge_sent < 32 << 20, srv.huge_sent
    (reject,) = lines(tmp_path / "out" / "rejects.jsonl")
    assert (reject["ordinal"], reject["step"], reject["reason"]) == (0, "question", "response_too_large")
    assert [p["ordinal"] for p in lines(tmp_path / "out" / "pairs.jsonl")] == [1]
    assert summary["counts"]["rejects"] == {"question:response_too_large": 1}
    cached = list((tmp_path / "out" / "cache").rglob("*.json"))
    assert len(cached) == 2 and max(p.stat().st_size for p in cached) < 4096  # document 1's question and answer
    # a reply whose Content-Length already says it is too long is refused before its body is read
    docs = write_docs(tmp_path / "one.jsonl", n=1)
    with FakeOpenAI() as srv:
        rewrite_file(docs, tmp_path / "small", config(srv.url, max_response_bytes=100, max_failure_rate=1.0))
    (reject,) = lines(tmp_path / "small" / "rejects.jsonl")
    assert reject["reason"] == "response_too_large" and "announced, over --max-response-bytes 100" in reject["output"]


def test_replies_faking_chat_turns_are_rejected_with_their_reason(tmp_path):
    markers = {0: "[[inject-template]]", 1: "[[inject-template]]", 2: "[[inject-role]]", 3: "[[inject-role]]"}
    docs = write_docs(tmp_path / "documents.jsonl", n=5, markers=markers)
    with FakeOpenAI() as srv:
        summary = rewrite_file(docs, tmp_path / "out", config(srv.url))
    rejects = {r["ordinal"]: (r["step"], r["reason"], r["tries"]) for r in lines(tmp_path / "out" / "rejects.jsonl")}
    assert rejects == {0: ("answer", "template_marker", ["template_marker"] * 2),  # English: "<问>: ...\n<答> : ..."
                       1: ("answer", "template_marker", ["template_marker"] * 2),  # Chinese: "<问>：...\n<答>：..."
                       2: ("question", "role_marker", ["role_marker"] * 2),
                       3: ("question", "role_marker", ["role_marker"] * 2)}
    assert [p["ordinal"] for p in lines(tmp_path / "out" / "pairs.jsonl")] == [4]
    assert summary["counts"]["rejects"] == {"answer:template_marker": 2, "question:role_marker": 2}


def test_chat_markup_of_every_template_is_caught_and_medical_prose_is_not():
    from megatron_huatuo.data.templates import TEMPLATES

    for t in TEMPLATES.values():
        for marker in (t.user_prefix, t.user_suffix, t.assistant_prefix, t.assistant_suffix):
            if marker.strip():
                assert chat_markup(f"Rest well.\n{marker}Then what?") is not None, (t.name, marker)
    for text in ("<问>：还有吗？", "答案如下。<答>:停药", "< 问 > ： 还有吗", "＜答＞：停药", "〈问〉还有吗"):
        assert chat_markup(text) == TEMPLATE_MARKER, text
    for text in ("<|im_start|>user", "<|user|> hi", "<|assistant|>", "<|eot_id|>", "[INST] more? [/INST]",
                 "<<SYS>> be brief", "<reserved_106>再问", "<start_of_turn>model", "done</s>", "Human: and then?",
                 "Rest.\n### Assistant: stop", "rest\nUSER: what else", "  Assistant：停药", "用户：还有吗",
                 "### Response: stop"):
        assert chat_markup(text) == ROLE_MARKER, text
    for text in ("Human papillomavirus (HPV) causes warts.", "The user: a patient taking the drug.",
                 "答：多休息。", "问题：发热怎么办？", "患者：男，45岁，发热三天。", "If x < 5 and y > 3, stop.",
                 "Assistant professors reviewed the cases.", "Use a|b testing.", "<b>bold</b> text",
                 "Review of systems: normal.", "《内科学》第九版"):
        assert chat_markup(text) is None, text


def test_http_400_on_every_request_exits_non_zero_with_a_summary(tmp_path, capsys):
    docs = write_docs(tmp_path / "documents.jsonl", n=3, markers={i: "[[http400]]" for i in range(3)})
    with FakeOpenAI() as srv:
        args = ["rewrite", "--docs", str(docs), "--out", str(tmp_path / "out"), "--base-url", srv.url,
                "--backoff", "0.01"]
        assert cli.main(args) == 5
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == ("failed: 3 of 3 documents got no pair (every document failed); most frequent reasons: "
                       "question:request_rejected x3; see rejects.jsonl")
        assert len(lines(tmp_path / "out" / "rejects.jsonl")) == 3  # written: they say why
        # a threshold: 2 of 3 failed is over 0.5, 1 of 3 is not
        docs = write_docs(tmp_path / "documents.jsonl", n=3, markers={0: "[[http400]]", 1: "[[http400]]"})
        assert cli.main(args + ["--max-failure-rate", "0.5"]) == 5
        assert "2 of 3 documents got no pair (over --max-failure-rate 0.5)" in capsys.readouterr().err
        docs = write_docs(tmp_path / "documents.jsonl", n=3, markers={0: "[[http400]]"})
        assert cli.main(args + ["--max-failure-rate", "0.5"]) == 0
        with pytest.raises(TooManyFailures) as exc:
            rewrite_file(docs, tmp_path / "out", config(srv.url, max_failure_rate=0.0))
    assert exc.value.summary["counts"]["pairs"] == 2


def test_an_input_without_documents_is_an_error_unless_allowed(tmp_path):
    docs = tmp_path / "documents.jsonl"
    docs.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RewriteError, match=r"documents\.jsonl: no documents \(an empty input is an error; "
                                           r"--allow-empty accepts it\)"):
        rewrite_file(docs, tmp_path / "out", config("http://127.0.0.1:9"))
    summary = rewrite_file(docs, tmp_path / "out", config("http://127.0.0.1:9", allow_empty=True))
    assert summary["counts"]["documents"] == 0 and (tmp_path / "out" / "pairs.jsonl").read_text() == ""
