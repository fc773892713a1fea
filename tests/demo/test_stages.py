"""Stage reuse: done markers keyed by settings and input content, interrupted stages, stale outputs."""
from __future__ import annotations

import pytest

from megatron_huatuo.demo.stages import Runner, Stage


def make_pipeline(tmp_path, calls, params=None, fail_second=False):
    src = tmp_path / "input.txt"
    a_out = tmp_path / "a"
    b_out = tmp_path / "b" / "result.txt"

    def run_a():
        calls.append("a")
        a_out.mkdir(exist_ok=True)
        # Output depends only on the input's content (upper-cased), not on when it ran.
        (a_out / "upper.txt").write_text(src.read_text().upper())
        return {"chars": len(src.read_text())}

    def run_b():
        calls.append("b")
        if fail_second:
            b_out.parent.mkdir(exist_ok=True)
            (b_out.parent / "partial").write_text("half-written")
            raise RuntimeError("boom")
        b_out.parent.mkdir(exist_ok=True)
        b_out.write_text((a_out / "upper.txt").read_text() + "!")

    return [
        Stage("a", "upper-case", run_a, inputs=[src], params=params or {"mode": "upper"}, outputs=[a_out], clean=[a_out]),
        Stage("b", "exclaim", run_b, inputs=lambda: [a_out], outputs=[b_out], clean=[b_out.parent]),
    ]


def test_second_run_reuses_everything(tmp_path):
    (tmp_path / "input.txt").write_text("hello")
    calls, logs = [], []
    results = Runner(tmp_path / "state", log=logs.append).run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b"] and [r.status for r in results] == ["ran", "ran"]
    results = Runner(tmp_path / "state", log=logs.append).run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b"] and [r.status for r in results] == ["reused", "reused"]
    assert results[0].result == {"chars": 5}  # a reused stage still reports what it produced
    assert any("reused" in line for line in logs)


def ran_once(tmp_path):
    """The pipeline run once on "hello": (its input file, the list of calls)."""
    src = tmp_path / "input.txt"
    src.write_text("hello")
    calls = []
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    return src, calls


def test_changed_input_reruns_stage_and_dependants_only_when_content_changes(tmp_path):
    src, calls = ran_once(tmp_path)
    src.write_text("world")
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b", "a", "b"]
    assert (tmp_path / "b" / "result.txt").read_text() == "WORLD!"
    # Touching the file without changing it reuses everything; changing only the settings reruns "a", and
    # since its output is byte-identical, "b" is reused.
    src.write_text("world")
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b", "a", "b"]
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls, params={"mode": "upper", "v": 2}))
    assert calls == ["a", "b", "a", "b", "a"]


def test_failed_stage_leaves_no_marker_and_stale_outputs_are_cleaned(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("hello")
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls, fail_second=True))
    assert not (tmp_path / "state" / "b.done.json").exists()
    assert (tmp_path / "state" / "b.pending.json").exists()
    # Same inputs: the interrupted stage's outputs are kept for it to resume from.
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    assert (tmp_path / "b" / "partial").exists()
    assert calls == ["a", "b", "b"]
    # Different inputs: a fresh run deletes what the old one left.
    (tmp_path / "b" / "partial").write_text("stale")
    src.write_text("other")
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    assert not (tmp_path / "b" / "partial").exists()


def test_missing_output_or_forced_stage_reruns(tmp_path):
    (tmp_path / "input.txt").write_text("hello")
    calls = []
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    (tmp_path / "b" / "result.txt").unlink()
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b", "b"]
    Runner(tmp_path / "state", force=["a"]).run(make_pipeline(tmp_path, calls))
    assert calls == ["a", "b", "b", "a"]
    with pytest.raises(ValueError, match="unknown stage"):
        Runner(tmp_path / "state", force=["nope"]).run(make_pipeline(tmp_path, calls))


def test_missing_component_skips_dependants_only(tmp_path):
    from megatron_huatuo.demo.stages import MissingComponent

    def absent():
        raise MissingComponent("needs `python -m nothing`")

    calls = []
    stages = [
        Stage("tool", "needs an absent tool", lambda: calls.append("tool"), check=absent),
        Stage("after", "depends on it", lambda: calls.append("after"), needs=["tool"]),
        Stage("free", "independent", lambda: calls.append("free")),
    ]
    results = Runner(tmp_path / "state", log=lambda _: None).run(stages)
    assert [r.status for r in results] == ["missing", "skipped", "ran"]
    assert calls == ["free"]
    assert "python -m nothing" in results[0].result["reason"]


def test_damaged_output_reruns_its_stage_and_the_next_one_is_reused(tmp_path):
    """A stage's output truncated after it finished (a .bin cut short) is rebuilt, not passed on as "unchanged";
    the rebuilt bytes are the same, so the stage after it is still reused (its checkpoints are not thrown away)."""
    _, calls = ran_once(tmp_path)
    logs = []
    (tmp_path / "a" / "upper.txt").write_text("HEL")  # truncated
    results = Runner(tmp_path / "state", log=logs.append).run(make_pipeline(tmp_path, calls))
    assert [r.status for r in results] == ["ran", "reused"] and calls == ["a", "b", "a"]
    assert (tmp_path / "a" / "upper.txt").read_text() == "HELLO"
    assert any("outputs changed since it finished" in line for line in logs)


def test_finished_outputs_survive_until_their_replacement_is_complete(tmp_path):
    src, calls = ran_once(tmp_path)
    good = (tmp_path / "b" / "result.txt").read_text()
    src.write_text("world")  # b must run again, and this time it fails half-way
    with pytest.raises(RuntimeError, match="boom"):
        Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls, fail_second=True))
    kept = tmp_path / ".b.previous" / "result.txt"
    assert kept.read_text() == good  # the finished output was moved aside, not deleted
    Runner(tmp_path / "state").run(make_pipeline(tmp_path, calls))  # the replacement completes ...
    assert (tmp_path / "b" / "result.txt").read_text() == "WORLD!"
    assert not (tmp_path / ".b.previous").exists()  # ... and only then is the old one deleted
