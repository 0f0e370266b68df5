"""scripts/bench_runtime.py runs on any model and reports CARVQ / dense throughput ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime_parity import tiny_base

pytestmark = pytest.mark.runtime
_ = tiny_base  # the session fixture, shared with the parity tests

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_runtime.py"


def test_bench_reports_ratios_for_a_tiny_model(tiny_base) -> None:
    source = tiny_base("llama")
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", str(source), "--json", "--reps", "1",
                             "-p", "16", "-n", "4"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in ("pp_ratio", "tg_ratio", "dense_pp_tps", "carvq_pp_tps", "dense_tg_tps", "carvq_tg_tps"):
        assert report[key] > 0, key
    assert report["pp_ratio"] == pytest.approx(report["carvq_pp_tps"] / report["dense_pp_tps"])
    assert len(report["samples"]["carvq"]["tg"]) == 1


def test_bench_refuses_a_missing_model(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tmp_path / "none.gguf")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not found" in result.stderr
