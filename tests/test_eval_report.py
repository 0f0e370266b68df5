"""The report's reading of the rows: fallback duplicates collapse, and "CARVQ beats TYPE from b bpw"
is claimed only with no more bits and no larger perplexity change."""

from __future__ import annotations

from pathlib import Path

from carvq_gguf.eval.pareto_report import comparisons, from_scratch_seconds, markdown, stock_points, write_report


def _row(name: str, method: str, actual: str, bpw: float, dppl: float, kld: float) -> dict:
    return {"name": name, "method": method, "setting": name, "actual_type": actual, "note": "", "build_seconds": 1.0,
            "embedding_type": actual, "embedding_bpw": bpw, "embedding_bytes": int(bpw * 1000), "file_bytes": 10 ** 6,
            "ppl": 10 * (1 + dppl / 100), "ppl_err": 0.1, "dppl_percent": dppl, "kld": kld, "kld_err": 0.001,
            "same_top_p": 90.0}


ROWS = [
    _row("Q8_0", "llama.cpp", "Q8_0", 8.5, 0.01, 0.0001),
    _row("Q4_K", "llama.cpp", "Q5_0", 5.5, 0.1, 0.002),   # fell back to Q5_0
    _row("Q5_0", "llama.cpp", "Q5_0", 5.5, 0.1, 0.002),
    _row("Q2_0", "llama.cpp", "Q2_0", 2.25, 20.0, 0.2),
    {"name": "Q1_0", "method": "llama.cpp", "setting": "Q1_0", "actual_type": None, "build_seconds": 0.5,
     "note": "not supported by llama.cpp here: no tensor type fallback"},
    _row("carvq-1.6", "CARVQ", "CARVQ", 1.6, 8.0, 0.1),
    _row("carvq-2.4", "CARVQ", "CARVQ", 2.4, 3.0, 0.05),
    _row("rvq-1.6", "RVQ only", "CARVQ", 1.5, 400.0, 2.0),
]


def test_stock_points_one_per_written_type() -> None:
    assert [r["actual_type"] for r in stock_points(ROWS)] == ["Q2_0", "Q5_0", "Q8_0"]


def test_comparisons() -> None:
    lines = comparisons(ROWS)
    assert len(lines) == 3
    q2, q5, q8 = lines
    assert q2.startswith("Q2_0 (2.25 bpw") and "beaten from 1.60 bpw by carvq-1.6" in q2
    assert "no CARVQ variant at or below 5.50 bpw is as good" in q5  # 3% > 0.1%
    assert "no CARVQ variant" in q8
    # RVQ only never counts as CARVQ
    assert all("rvq-1.6" not in line.replace("carvq-1.6", "") for line in lines)


def test_markdown_and_files(tmp_path: Path) -> None:
    data = {"source": {"name": "m.gguf", "sha256": "ab" * 32, "vocab_size": 100, "embedding_dim": 64,
                       "embedding_type": "Q8_0", "embedding_bpw": 8.5, "embedding_bytes": 6800, "file_bytes": 10 ** 6,
                       "tied": True, "ppl": 10.0},
            "settings": {"text_name": "eval.txt", "calib_text_name": "calib.txt", "ctx": 512, "windows": 32,
                         "scored_tokens": 8160, "threads": 2, "imatrix_chunks": 32, "seed": 0,
                         "codec_code_version": "abc"},
            "rows": ROWS, "wall_seconds": 600.0}
    md = markdown(data)
    assert "32 windows of 512 tokens" in md and "(8160 tokens)" in md
    assert "explicitly as `output.weight` in the source's Q8_0" in md
    assert "| Q1_0 | llama.cpp | not made |" in md and "no tensor type fallback" in md
    assert "| Q4_K | llama.cpp | Q5_0 | 5.500 |" in md
    assert "the run that wrote this report took 10.0 min" in md
    assert "Types marked not made" in md and "divide the row length n = 64" in md
    paths = write_report(data, tmp_path / "r")
    assert paths["png"].stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["pareto.json", "pareto.md", "pareto.png"]


def test_from_scratch_seconds_counts_each_file_once() -> None:
    rows = [dict(r, model_sha256=r["actual_type"], eval_seconds=10.0) for r in ROWS if r.get("ppl") is not None]
    data = {"source": {"base_seconds": 5.0}, "rows": rows, "untie_imatrix_seconds": 2.0}
    # 7 builds of 1 s; Q4_K and Q5_0 are the same Q5_0 file and the three CARVQ rows share a fake hash here
    assert from_scratch_seconds(data) == 5.0 + 7 * 1.0 + 4 * 10.0 + 2.0
