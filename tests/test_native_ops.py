"""llama.cpp's own op tests for GGML_OP_GET_ROWS_RVQ and GGML_OP_GET_ROWS_TCQ, under ASan+UBSan.

test-backend-ops compares a backend with the CPU backend's reference mode; the op is CPU-only, so
the CPU backend is selected explicitly. In reference mode the kernel finds correction rows by a
linear scan instead of the binary search, a predicted row's word by counting mask bits from row 0
instead of the map's block counts, and the two runs use different thread counts, so a search,
index, row-split or bounds error shows as a mismatch (or a sanitizer report)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from carvq_gguf.runtime import native as native_build
from native_fixtures import native_bin

pytestmark = pytest.mark.native
_ = native_bin


def _backend_ops_cases(native_bin: Path, op: str) -> list[dict[str, str]]:
    """Run test-backend-ops for op on the CPU backend; every case must pass. Returns each case's
    parameters."""
    result = subprocess.run([str(native_bin / "test-backend-ops"), "test", "-o", op, "-b", "CPU"],
                            capture_output=True, text=True, env=native_build.sanitizer_env(), timeout=1200)
    out = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # colours
    assert result.returncode == 0, out[-4000:]
    cases = re.findall(op + r"\(([^)]*)\): (\S+)", out)
    assert cases, out[-4000:]
    assert all(status == "OK" for _, status in cases), out[-4000:]
    m = re.search(r"(\d+)/(\d+) tests passed", out)
    assert m and m.group(1) == m.group(2), out[-2000:]
    return [dict(kv.split("=") for kv in args.split(",")) for args, _ in cases]


def test_backend_ops_get_rows_rvq(native_bin: Path) -> None:
    params = _backend_ops_cases(native_bin, "GET_ROWS_RVQ")
    # both layouts (group_size 0 and > 0), K < 16, with and without corrections, odd batch sizes
    assert len(params) >= 50
    assert {p["group_size"] for p in params} >= {"0", "3"}
    assert {p["K"] for p in params} >= {"2", "8", "16"}
    assert {p["n_corr"] for p in params} >= {"0", "5"}
    assert {p["r"] for p in params} >= {"1", "7", "33"}


def test_backend_ops_get_rows_tcq(native_bin: Path) -> None:
    params = _backend_ops_cases(native_bin, "GET_ROWS_TCQ")
    # state bits from 2 to 16, steps of 1 to 8 bits (8: across two bytes), 1 to 4 values, one table to one per
    # step, with and without corrections, odd batch sizes, Gemma 3's row of 320 steps
    assert len(params) >= 100
    assert {p["L"] for p in params} >= {"2", "4", "10", "16"}
    assert {p["k"] for p in params} >= {"1", "3", "8"}
    assert {p["d"] for p in params} >= {"1", "2", "4"}
    assert {p["G"] for p in params} >= {"1", "3", "16"}
    assert {p["n_corr"] for p in params} >= {"0", "5"}
    assert {p["r"] for p in params} >= {"1", "33", "257"}
    assert "320" in {p["T"] for p in params}

    # predicted rows (ggml_get_rows_tcq_add_prediction): vocabularies around the map's blocks of 32 rows (1: a map
    # that predicts none), one row, half and all but one predicted, with and without corrections, each trellis step
    # width, one id and a batch; n_pred = -1 is a case without prediction
    predicted = [p for p in params if p["n_pred"] != "-1"]
    assert len(predicted) >= 150
    assert {p["n_vocab"] for p in predicted} >= {"1", "31", "32", "33", "100", "257"}
    assert {(p["n_vocab"], p["n_pred"]) for p in predicted} >= {("1", "0"), ("32", "1"), ("33", "16"), ("257", "256")}
    assert {p["n_corr"] for p in predicted} >= {"0", "5"}
    assert {p["k"] for p in predicted} >= {"1", "3", "5", "8"}
    assert {p["r"] for p in predicted} >= {"1", "33", "257"}
    assert "320" in {p["T"] for p in predicted}
    assert any(p["n_pred"] == "-1" for p in params)
