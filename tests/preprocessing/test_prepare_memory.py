"""One very large document goes through ``prepare`` in memory proportional to it (issue 10: a 50 MB document cost
5 GB, ~100x; a 5 MB Chinese one 1.9 GB before ``text.Units``).

Measured as the peak RSS of the real CLI in a subprocess (VmHWM at exit, one worker so the document is processed in
that process) minus the same on a 3 KB document: what the document itself costs. Chinese is the worst case per byte
(every character is its own unit, 3 bytes of UTF-8), and random characters pass every filter, so every stage runs (repetition n-grams, MinHash, chunking, the merge).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from huatuo_testing import REPO_ROOT

DOC_MB = 2
MAX_MULTIPLE = 20  # measured ~14x on the 2-core dev box (bench/RESULTS.md); before the fix ~380x
# The CLI in a child that prints its peak RSS at exit. VmHWM, not ru_maxrss: Linux starts a child's ru_maxrss at
# its parent's peak (here pytest's, which held the document).
_RUN_AND_REPORT_PEAK = """
import atexit, runpy, sys
atexit.register(lambda: print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")),
                              file=sys.stderr))
sys.argv[0] = "preprocessing"
runpy.run_module("preprocessing", run_name="__main__")
"""


def chinese_document(n_bytes: int, seed: int = 0) -> str:
    """Random common CJK characters in sentences of 24 with a full stop: no repetition, every filter passes."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0x4E00, 0x9FA6, size=(n_bytes // 3 // 25, 25), dtype=np.uint32)
    codes[:, -1] = ord("。")
    return codes.tobytes().decode("utf-32-le")


def peak_rss_kb(directory: Path, text: str) -> int:
    """Peak RSS of ``prepare`` (one worker) on one document, in kB."""
    directory.mkdir()
    (directory / "doc.jsonl").write_text(json.dumps({"id": "doc", "text": text}, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    (directory / "s.yaml").write_text("- {name: big, kind: book, lang: zh, path: doc.jsonl}\n")
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT_PEAK, "prepare", "--sources",
                           str(directory / "s.yaml"), "--out", str(directory / "out"), "--workers", "1", "--quiet"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kept_documents"] == 1  # the document went through every stage
    return int(proc.stderr.rsplit("VmHWM:", 1)[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
def test_a_large_document_costs_a_small_multiple_of_its_size(tmp_path):
    text = chinese_document(DOC_MB << 20)
    doc_kb = len(text.encode("utf-8")) / 1024
    baseline = peak_rss_kb(tmp_path / "small", chinese_document(3000))
    peak = peak_rss_kb(tmp_path / "big", text)
    multiple = (peak - baseline) / doc_kb
    print(f"{doc_kb / 1024:.1f} MB document: peak RSS {peak / 1024:.0f} MiB, {baseline / 1024:.0f} MiB for a 3 KB one: "
          f"{multiple:.1f}x the document")
    assert multiple < MAX_MULTIPLE
