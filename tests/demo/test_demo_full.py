"""The full demo (what `make demo` runs), twice: every stage runs, then every stage is reused.

Training is shortened to 20 steps to keep the suite fast; everything else is the default demo (~1.5 min).
"""
from __future__ import annotations

import json
import subprocess
import sys


def test_full_demo_runs_then_reuses(tmp_path, repo_root):
    out = tmp_path / "demo_output"
    cmd = [sys.executable, "-m", "megatron_huatuo.demo", "--out", str(out), "--quiet", "--steps", "20"]
    first = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["ran"] * len(summary["stages"])
    answer = json.loads((out / "answer.json").read_text())
    assert answer["new_tokens"] > 0 and answer["prompt"].startswith("<问>：")
    ev = json.loads((out / "eval" / "summary.json").read_text())["benchmarks"][0]
    assert ev["total"] == 44 and 0 <= ev["ci_low"] <= ev["accuracy"] <= ev["ci_high"] <= 1
    assert (out / "hf_model" / "config.json").is_file()

    second = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["reused"] * len(summary["stages"])
