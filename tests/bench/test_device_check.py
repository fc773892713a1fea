"""The device check is rehearsed on CPU before any GPU time is spent: ``device_check.sh --dry-run`` checks the
pinned wheel folder and the carried size, and every throughput-bench case runs end to end at tiny shapes
(``gpu_throughput.py --smoke``: the same trainer, transformers, attention and report code paths)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

from huatuo_testing import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "device_check.sh"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput", REPO_ROOT / "bench" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pinned_wheel_names():
    names = []
    for line in (REPO_ROOT / "bench" / "device_wheels.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            names.append(f"{name.replace('-', '_')}-{version}-py3-none-any.whl")
    return names


def test_dry_run_checks_the_wheel_folder_and_prints_the_plan(tmp_path):
    whl = tmp_path / "whl"
    whl.mkdir()
    for name in _pinned_wheel_names():
        (whl / name).write_bytes(b"stand-in")
    ok = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env={"WHL": str(whl), "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "carried size ok" in ok.stdout and "pytest -m gpu" in ok.stdout
    planned = re.findall(r"bench case (\S+) \(cap (\d+) s\)", ok.stdout)
    assert [name for name, _ in planned] == [case.name for case in _bench().CASES]  # script and bench agree
    assert sum(int(cap) for _, cap in planned) > 0

    (whl / _pinned_wheel_names()[0]).unlink()
    missing = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env={"WHL": str(whl), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "MISSING: megatron_core-0.19.2-" in missing.stdout


def test_every_bench_case_runs_at_tiny_shapes_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_throughput.py", "--smoke", "--case", "all", "--out", str(tmp_path),
                           "--report", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "device_check.json").read_text())
    cases = summary["cases"]
    assert set(cases) == {case.name for case in _bench().CASES}
    assert not [name for name, case in cases.items() if "error" in case]
    for name in ("baichuan2-7b-sdpa", "baichuan2-13b-flex", "yi-34b-sdpa", "baichuan2-13b-flex-isolated"):
        assert cases[name]["exit_code"] == 0 and len(cases[name]["losses"]) == 3 and cases[name]["tokens_per_s"] > 0
    assert cases["baichuan2-13b-flex-isolated"]["data"] == "isolated"
    assert cases["baichuan2-7b-hf"]["tokens_per_s"] > 0 and summary["7b_vs_transformers"] > 0
    backends = {(row["backend"], row["seq"]) for row in cases["baichuan2-13b-attention"]["rows"]}
    assert backends == {("flex", 32), ("flex", 64), ("local", 32), ("local", 64)}
    table = (tmp_path / "device_check.md").read_text()
    assert "| baichuan2-7b-sdpa |" in table and "13B core attention" in table
