"""The AWQ + CARVQ report end to end on a tiny random llama GGUF: every variant built, scored by
llama-perplexity against the source on the same windows, and written as markdown, JSON and PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from carvq_gguf.eval import awq_report
from carvq_gguf.awq.search import AwqConfig
from carvq_gguf.eval.awq_report import VARIANTS, AwqReportOptions, findings, run_awq_report, write_awq_report
from carvq_gguf.eval.cache import EvalCache
from tiny_sources import SENTENCES, make_tiny_hf


def _row(name: str, ppl: float, file_bytes: int = 100) -> dict:
    return {"name": name, "ppl": ppl, "file_bytes": file_bytes, "chunk_ppl": [ppl, ppl]}


def test_window_log_ppl_undoes_the_running_average() -> None:
    running = [10.0, math.sqrt(10.0 * 40.0), (10.0 * 40.0 * 5.0) ** (1 / 3)]
    assert awq_report.window_log_ppl(running) == pytest.approx([math.log(10), math.log(40), math.log(5)])


def test_findings_compare_the_right_rows() -> None:
    rows = [_row("source", 10.0, 1000), _row("source + CARVQ", 11.0), _row("Q4 RTN", 13.0),
            _row("Q4 RTN + CARVQ", 14.3), _row("AWQ-Q4", 12.0, 400), _row("AWQ-Q4 + CARVQ", 13.44, 250), _row(awq_report.AWQ_ON_CARVQ, 13.2),
            _row("Q4 imatrix", 12.5), _row("Q4 imatrix + CARVQ", 13.75)]
    f = findings(rows)
    assert f["awq_beats_rtn"]
    assert f["carvq_cost_unquantized_percent"] == pytest.approx(10.0)
    assert f["carvq_cost_awq_percent"] == pytest.approx(12.0)
    assert f["carvq_cost_rtn_percent"] == pytest.approx(10.0)
    assert f["carvq_cost_imatrix_percent"] == pytest.approx(10.0)
    assert f["carvq_cost_awq_within_2pp"]          # 12.0 <= 10 + 2
    assert f["carvq_cost_gap_points"] == pytest.approx(2.0)
    assert f["carvq_cost_gap_se_points"] == pytest.approx(0.0, abs=1e-9)  # every window agrees
    assert f["awq_on_carvq_cost_percent"] == pytest.approx(10.0)
    assert f["awq_carvq_size_ratio"] == pytest.approx(0.25)
    rows[5]["ppl"] = 13.5                          # 12.5 > 10 + 2
    assert not findings(rows)["carvq_cost_awq_within_2pp"]
    rows[4]["ppl"] = 13.0                          # AWQ no better than RTN
    assert not findings(rows)["awq_beats_rtn"]


@pytest.mark.runtime
def test_awq_report_on_tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> None:
    from carvq_gguf.convert.hf_source import hf_to_gguf

    root = tmp_path_factory.mktemp("awq-report")
    source = hf_to_gguf(make_tiny_hf(root / "hf", tied=True), root / "tiny.gguf", "f16")
    text, calib = root / "eval.txt", root / "calib.txt"
    text.write_text(" ".join(SENTENCES * 3))           # one line: the tiny vocabulary has no newline
    calib.write_text(" ".join(reversed(SENTENCES * 3)))
    options = AwqReportOptions(preset="rvq-1.6", calib_text=calib, text=text, ctx=64, windows=5, imatrix_chunks=4,
                               awq=AwqConfig(seq_len=64, max_windows=4), progress=False)
    data = run_awq_report(source, options, EvalCache(root / "cache"))

    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == [name for name, _, _ in VARIANTS]
    assert rows["source"]["dppl_percent"] == pytest.approx(0.0, abs=1e-6)
    carvq = [r for r in rows.values() if r["embedding"] == "CARVQ"]
    assert {r["embedding_type"] for r in carvq} == {"CARVQ"}
    assert len({r["embedding_bytes"] for r in carvq}) == 1  # one codec for every CARVQ variant
    assert rows["Q4 RTN"]["embedding_type"] != "CARVQ" and rows["AWQ-Q4"]["file_bytes"] < rows["source"]["file_bytes"]
    assert data["awq"]["groups"] == 2 * 3 and data["awq"]["quant_simulated"] == "q4_0"
    assert all(r["windows"] == data["windows"] for r in rows.values())
    assert data["findings"] == findings(data["rows"])

    paths = write_awq_report(data, root / "report")
    assert json.loads(paths["json"].read_text())["rows"][5]["name"] == "AWQ-Q4 + CARVQ"
    md = paths["md"].read_text()
    assert all(f"| {name} |" in md for name in rows) and "awq-q4.png" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
